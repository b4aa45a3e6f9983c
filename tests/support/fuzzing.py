"""What the schemathesis fuzzing of the OpenAPI document checks, shared by its test modules."""

from __future__ import annotations

from schemathesis import checks

# Everything the document promises about an answer. Left out: positive_data_acceptance
# (a schema-valid request may still ask for a scope or audience the client lacks:
# RFC 6749 refuses it with 400, and no schema can know the client's grants).
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.allow_header_conformance,
]
