"""The OpenAPI 3.1 description of the task API, served at ``/openapi.json``."""

from __future__ import annotations

from functools import cache
from typing import Any

from . import __name__ as _package

_ERROR = {
    "description": "An error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_UNAVAILABLE = {
    **_ERROR,
    "description": "The database cannot be used now, or the service is stopping",
    "headers": {
        "Retry-After": {
            "description": "Seconds to wait before trying again (when the database is out)",
            "schema": {"type": "integer"},
        }
    },
}
_STEP_ID_TEXT = "^[ \\t\\n\\r]*[0-9]{1,20}[ \\t\\n\\r]*$"
"""``step_id`` as text (the API's ``STEP_ID_TEXT``)."""


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "Execution plan id (a UUID).",
}

_TASK_ID_ITEM = {
    "description": "A task UUID; items that are not strings (Foreman sends null) are ignored."
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "SingleInput": {
        "type": "object",
        "required": ["action_class", "action_input"],
        "properties": {
            "action_class": {"type": "string", "description": "A registered action name."},
            "action_input": {"type": "object", "additionalProperties": True},
        },
    },
    "LaunchRequest": {
        "type": "object",
        "required": ["operation", "input"],
        "properties": {
            "operation": {"type": "string", "description": "See GET /tasks/operations."},
            "input": {
                "description": "`single`: a SingleInput; batch operations (e.g. `ssh`): an "
                "object keyed by task UUIDs whose values are SingleInputs.",
                "oneOf": [
                    _ref("SingleInput"),
                    {"type": "object", "additionalProperties": _ref("SingleInput")},
                ],
            },
            "options": {"type": ["object", "null"], "additionalProperties": True},
        },
    },
    "LaunchResult": {
        "type": "object",
        "required": ["result", "task_id"],
        "properties": {
            "result": {"type": "string", "enum": ["success", "error"]},
            "task_id": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "string"}},
        },
    },
    "TaskIds": {
        "type": "object",
        "required": ["task_ids"],
        "properties": {"task_ids": {"type": "array", "minItems": 1, "items": _TASK_ID_ITEM}},
    },
    "OptionalTaskIds": {
        "description": "No body, null, no task_ids or null: no ids (an empty answer).",
        "type": ["object", "null"],
        "properties": {"task_ids": {"type": ["array", "null"], "items": _TASK_ID_ITEM}},
    },
    "StateResult": {
        "type": "object",
        "properties": {"state": {"type": "string"}, "result": {"type": "string"}},
    },
    "OutputRecord": {
        "type": "object",
        "required": ["output_type", "output", "timestamp"],
        "properties": {
            "output_type": {"type": "string", "enum": ["stdout", "stderr", "debug"]},
            "output": {"type": "string"},
            "timestamp": {"type": "number"},
            "id": {},
        },
    },
    "Action": {
        "type": "object",
        "properties": {
            "class": {"type": "string"},
            "execution_plan_id": {"type": "string"},
            "id": {"type": "integer"},
            "plan_step_id": {"type": "integer"},
            "run_step_id": {"type": ["integer", "null"]},
            "finalize_step_id": {"type": ["integer", "null"]},
            "caller_execution_plan_id": {"type": ["string", "null"]},
            "caller_action_id": {"type": ["integer", "null"]},
            "input": {"type": "object", "description": "Secrets are redacted."},
            "output": {
                "type": "object",
                "description": "Runner actions: result (OutputRecords), runner_id, and once "
                'finished exit_status (integer or "EXCEPTION") and exit_status_timestamp.',
            },
        },
    },
    "TaskStatus": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "class": {"type": "string"},
            "label": {"type": "string"},
            "state": {
                "type": "string",
                "enum": [
                    "pending",
                    "scheduled",
                    "planning",
                    "planned",
                    "running",
                    "paused",
                    "stopped",
                ],
            },
            "result": {
                "type": "string",
                "enum": ["pending", "success", "warning", "error", "cancelled"],
            },
            "root_plan_step_id": {"type": "integer"},
            "run_flow": {},
            "finalize_flow": {},
            "step_ids": {"type": "array", "items": {"type": "integer"}},
            "started_at": {"type": ["string", "null"]},
            "ended_at": {"type": ["string", "null"]},
            "execution_time": {"type": ["number", "null"]},
            "real_time": {"type": ["number", "null"]},
            "execution_history": {"type": "array", "items": {"type": "object"}},
            "progress": {
                "type": ["number", "null"],
                "description": "Weighted progress of the plan's run and finalize steps, 0..1",
            },
            "actions": {"type": "array", "items": _ref("Action")},
        },
    },
}


@cache
def openapi_document() -> dict[str, Any]:
    # The answers every endpoint reading a JSON body may give: 400 (not acceptable JSON, not an
    # object), 403 (authorization, cross-site), 413 (too large), 415 (not JSON), 422 (the value
    # is wrong), 503 (the database cannot be used); 409: a stored plan cannot be read.
    errors = {
        "400": _ERROR,
        "403": _ERROR,
        "413": _ERROR,
        "415": _ERROR,
        "422": _ERROR,
        "503": _UNAVAILABLE,
    }
    unreadable = {"409": _ERROR}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Smart Proxy Dynflow task API",
            "version": "0.1.0",
            "description": f"The JSON API Foreman uses to run tasks on a Smart Proxy ({_package}).",
        },
        "paths": {
            "/tasks/launch": {
                "post": {
                    "summary": "Launch tasks with a registered operation",
                    "requestBody": _body(_ref("LaunchRequest")),
                    "responses": {
                        "200": _json(
                            {
                                "description": "single: a LaunchResult; batch: "
                                '{"parent": LaunchResult}',
                                "oneOf": [
                                    _ref("LaunchResult"),
                                    {
                                        "type": "object",
                                        "required": ["parent"],
                                        "properties": {"parent": _ref("LaunchResult")},
                                    },
                                ],
                            }
                        ),
                        "404": _ERROR,
                        "409": _ERROR,
                        **errors,
                    },
                }
            },
            "/tasks": {
                "post": {
                    "summary": "Trigger one action (legacy)",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["action_name"],
                            "properties": {
                                "action_name": {"type": "string"},
                                "action_input": {"type": "object"},
                            },
                        }
                    ),
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"task_id": {"type": "string"}}}
                        ),
                        **errors,
                    },
                }
            },
            "/tasks/{task_id}/status": {
                "get": {
                    "summary": "Status of a task with its actions and output",
                    "parameters": [_TASK_ID],
                    "responses": {
                        "200": _json(_ref("TaskStatus")),
                        "404": _json({"type": "object"}, "Unknown task (body {})"),
                        "403": _ERROR,
                        **unreadable,
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/tasks/status": {
                "post": {
                    "summary": "State and result of many tasks (unknown ids are left out)",
                    "requestBody": _body(_ref("OptionalTaskIds"), required=False),
                    "responses": {
                        "200": _json(
                            {"type": "object", "additionalProperties": _ref("StateResult")}
                        ),
                        **errors,
                    },
                }
            },
            "/tasks/statuses": {
                "post": {
                    "summary": "Full status of many tasks (unknown ids are left out)",
                    "requestBody": _body(_ref("TaskIds")),
                    "responses": {
                        "200": _json(
                            {"type": "object", "additionalProperties": _ref("TaskStatus")}
                        ),
                        **unreadable,
                        **errors,
                    },
                }
            },
            "/tasks/count": {
                "get": {
                    "summary": "Number of tasks in a state",
                    "parameters": [
                        {
                            "name": "state",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "A plan state or all.",
                        }
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "count": {"type": "integer"},
                                    "state": {"type": "string"},
                                },
                            }
                        ),
                        "400": _ERROR,
                        "403": _ERROR,
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/tasks/operations": {
                "get": {
                    "summary": "Registered operations",
                    "responses": {
                        "200": _json({"type": "array", "items": {"type": "string"}}),
                        "403": _ERROR,
                    },
                }
            },
            "/tasks/{task_id}/cancel": {
                "post": {
                    "summary": "Cancel a task",
                    "parameters": [_TASK_ID],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "task_id": {"type": "string"},
                                    "canceled_steps_count": {"type": "integer"},
                                },
                            }
                        ),
                        "404": _ERROR,
                        **unreadable,
                        **errors,
                    },
                }
            },
            "/tasks/{task_id}/halt": {
                "post": {
                    "summary": "Halt a task: stop it for good (executing steps finish first)",
                    "parameters": [_TASK_ID],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "task_id": {"type": "string"},
                                    "state": {"type": "string"},
                                },
                            }
                        ),
                        "404": _ERROR,
                        **unreadable,
                        **errors,
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Engine metrics in the Prometheus text exposition format",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "403": _ERROR,
                    },
                }
            },
            **{
                f"/tasks/{{task_id}}/{kind}": {
                    "post": {
                        "summary": f"External event for a step ({kind}); accepts a one-time "
                        "password as Basic authorization",
                        "parameters": [_TASK_ID],
                        "requestBody": _body(
                            {
                                "type": "object",
                                "required": ["step_id"],
                                "properties": {
                                    "step_id": {
                                        "anyOf": [
                                            {"type": "integer"},
                                            {"type": "string", "pattern": _STEP_ID_TEXT},
                                        ]
                                    }
                                },
                                "additionalProperties": True,
                            }
                        ),
                        "responses": {
                            "200": {"description": "Delivered (empty body)"},
                            "404": _ERROR,
                            "409": _ERROR,
                            **errors,
                        },
                    }
                }
                for kind in ("update", "done")
            },
        },
        "components": {"schemas": _SCHEMAS},
    }
