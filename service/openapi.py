"""OpenAPI fragments for bodies the routes parse themselves (multipart or JSON)."""

_MULTIPART = {
    "type": "object",
    "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"}}},
    "required": ["image"],
}
_JSON = {
    "type": "object",
    "properties": {
        "images": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"filename": {"type": "string"}, "data": {"type": "string", "format": "byte"}},
                "required": ["data"],
            },
        }
    },
    "required": ["images"],
}


def upload_body(extra_fields: dict | None = None) -> dict:
    multipart = {**_MULTIPART, "properties": {**_MULTIPART["properties"], **(extra_fields or {})}}
    json_body = {**_JSON, "properties": {**_JSON["properties"], **(extra_fields or {})}}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": multipart}, "application/json": {"schema": json_body}},
        }
    }


IMAGE_UPLOAD = upload_body()
GATE_UPLOAD = upload_body({"threshold": {"type": "number"}, "policy": {"type": "string"}})

def archive_form(csv_columns: str, fields: dict, required: list[str]) -> dict:
    """The multipart schema of a labelled-archive upload (`archive` = zip of images + one CSV)."""
    archive = {"type": "string", "format": "binary", "description": f"zip: images + one CSV {csv_columns}"}
    return {"type": "object", "properties": {"archive": archive, **fields}, "required": ["archive", *required]}


VALIDATE_UPLOAD = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": archive_form("filename,mos", {"splits": {"type": "integer", "minimum": 1},
                                                        "seed": {"type": "integer", "minimum": 0}}, []),
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"spec": {"type": "string", "description": "NAME:PATH (only if enabled)"}},
                    "required": ["spec"],
                }
            },
        },
    }
}
