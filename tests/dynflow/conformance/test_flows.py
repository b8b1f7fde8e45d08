"""Conformance: Ruby Dynflow's ``test/flows_test.rb`` against our engine.

Ruby's ``Flows::Registry`` maps flow classes to the identifiers stored in a plan's encoded flows
(``Sequence`` ↔ ``"S"``, ``Concurrence`` ↔ ``"C"``). Our ``dynflow.flow`` has the same two
built-in identifiers (each class's ``tag``, read back by ``flow.decode``) but no registry
object. The flows are pure in-memory values, so these tests use no store.

Ruby tests not ported, with the reason:

* ``"flow" / "registry" / "allows registering values"``: our design has no flow registry to add
  identifiers to (the set of flow types is fixed: ``Sequence``, ``Concurrence``, ``Atom``);
  no equivalent API.
* ``"flow" / "registry" / "prevents overwriting values"``: same, there is no ``register!`` and
  so no ``IdentifierTaken``.
"""

from __future__ import annotations

import pytest

from dynflow import flow as flows


def test_encodes_and_decodes_flow_types() -> None:
    """flows_test.rb: "flow" / "registry" / "encodes and decodes values"."""
    sequence = flows.Sequence([flows.Atom(1), flows.Atom(2)])
    concurrence = flows.Concurrence([flows.Atom(3), flows.Atom(4)])
    assert sequence.encode()[0] == "S"
    assert concurrence.encode()[0] == "C"
    assert type(flows.decode(["S", 1, 2])) is flows.Sequence
    assert type(flows.decode(["C", 3, 4])) is flows.Concurrence
    assert flows.decode(sequence.encode()) == sequence
    assert flows.decode(concurrence.encode()) == concurrence
    nested = flows.Sequence([flows.Concurrence([flows.Atom(3), flows.Atom(5)]), flows.Atom(9)])
    assert nested.encode() == ["S", ["C", 3, 5], 9]
    assert flows.decode(["S", ["C", 3, 5], 9]) == nested


class UnregisteredFlow(flows.Composed):
    """A composed flow type that no identifier was set up for."""


def test_unknown_identifier_raises() -> None:
    """flows_test.rb: "flow" / "registry" / "raises an exception when unknown key is
    requested"."""
    with pytest.raises(ValueError):
        flows.decode(["F", 1])
    with pytest.raises(ValueError):
        flows.decode("F")
    # Dynflow refuses to encode a class it has no identifier for; a plan must never be stored
    # with a flow it cannot read back.
    with pytest.raises((ValueError, TypeError, NotImplementedError)):
        UnregisteredFlow([flows.Atom(1), flows.Atom(2)]).encode()
