#!/usr/bin/python3
"""Validate a JSON document (stdin) against schemas/loraslab-file.schema.json, and check that
the counts it reports agree with its tensor list."""
import json
import os
import sys

import jsonschema

schema = json.load(open(os.path.join(os.path.dirname(__file__), "../../schemas/loraslab-file.schema.json")))
doc = json.load(sys.stdin)
jsonschema.validate(doc, schema)
assert doc["tensor_count"] == len(doc["tensors"])
assert doc["total_bytes"] == sum(t["nbytes"] for t in doc["tensors"])
assert doc["merged_count"] == sum("lora" in t for t in doc["tensors"])
print(f"check_schema: valid, {doc['tensor_count']} tensors")
