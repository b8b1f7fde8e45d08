"""Persistence of the engine: schema and migrations, the store (named statements, row mapping,
queries), the group-commit writer and the health of the database."""
