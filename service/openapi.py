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
