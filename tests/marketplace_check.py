#!/usr/bin/env python3
"""Validates the request files `meterflow export` wrote against each marketplace's published model.

- AWS: every file is the input of `BatchMeterUsage`, checked by botocore's own parameter
  validator against the AWS Marketplace Metering Service model botocore ships (types, required
  members, lengths, 0 <= Quantity <= 2^31-1, at most 25 records), plus what the service enforces
  beyond the model: whole-hour timestamps, exactly one of CustomerIdentifier and
  CustomerAWSAccountId, and one record per customer, dimension and hour across the files; a
  record's UsageAllocations add up to its Quantity, with tag keys and values matching the model's
  pattern (botocore's validator checks lengths, not patterns).
- Azure: every file is a `batchUsageEvent` body, checked against the JSON Schema written from
  the REST reference (tests/schemas/azure-batch-usage-event.schema.json), and one event per
  resource, dimension and hour across the files.
- GCP: every file is a `services.report` body, checked against
  tests/schemas/gcp-services-report.schema.json, with unique operation ids.

Prints `records: N` per marketplace and the sum of quantities per (customer, dimension), which the
caller compares with the usage it computed, and for AWS the allocated quantity per (customer,
dimension, tags). Exit status 1 on the first invalid file.

    marketplace_check.py (--aws DIR | --azure DIR | --gcp DIR)...
"""

import argparse
import glob
import json
import os
import re
import sys
from collections import defaultdict
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.abspath(__file__))
# AWS allocated quantity per (customer, dimension, "key=value,..." tags).
ALLOCATED = defaultdict(int)


def files(d):
    found = sorted(glob.glob(os.path.join(d, "**", "*.json"), recursive=True))
    if not found:
        sys.exit(f"no request files under {d}")
    return found


def whole_hour(text):
    t = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return t.minute == 0 and t.second == 0


def check_aws(d):
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("meteringmarketplace")
    shape = model.operation_model("BatchMeterUsage").input_shape
    tag_shape = model.shape_for("Tag")
    patterns = {k: re.compile(tag_shape.members[k].metadata["pattern"]) for k in ("Key", "Value")}
    seen, totals, n = set(), defaultdict(int), 0
    for path in files(d):
        with open(path) as f:
            body = json.load(f)
        report = ParamValidator().validate(body, shape)
        if report.has_errors():
            sys.exit(f"{path}: BatchMeterUsage refuses it:\n{report.generate_report()}")
        for r in body["UsageRecords"]:
            who = [k for k in ("CustomerIdentifier", "CustomerAWSAccountId") if k in r]
            if len(who) != 1:
                sys.exit(f"{path}: a record names {who or 'no customer'}; exactly one is allowed")
            if not whole_hour(r["Timestamp"]):
                sys.exit(f"{path}: {r['Timestamp']} is not the start of an hour")
            key = (body["ProductCode"], r[who[0]], r["Dimension"], r["Timestamp"])
            if key in seen:
                sys.exit(f"{path}: {key} twice: AWS answers DuplicateRecord")
            seen.add(key)
            totals[(r[who[0]], r["Dimension"])] += r["Quantity"]
            allocations = r.get("UsageAllocations")
            if allocations is not None:
                allocated = sum(a["AllocatedUsageQuantity"] for a in allocations)
                if allocated != r["Quantity"]:
                    sys.exit(f"{path}: {key}: allocations add up to {allocated}, not {r['Quantity']}")
                for a in allocations:
                    for tag in a.get("Tags", []):
                        for k in ("Key", "Value"):
                            if not patterns[k].match(tag[k]):
                                sys.exit(f"{path}: tag {k} {tag[k]!r} does not match {patterns[k].pattern}")
                    tags = ",".join(f"{t['Key']}={t['Value']}" for t in a.get("Tags", []))
                    ALLOCATED[(r[who[0]], r["Dimension"], tags)] += a["AllocatedUsageQuantity"]
            n += 1
    return n, totals


def check_schema(d, schema_file, entries, key, quantity):
    import jsonschema

    with open(os.path.join(ROOT, "schemas", schema_file)) as f:
        schema = json.load(f)
    validator = jsonschema.Draft202012Validator(schema)
    seen, totals, n = set(), defaultdict(float), 0
    for path in files(d):
        with open(path) as f:
            body = json.load(f)
        errors = sorted(validator.iter_errors(body), key=lambda e: e.path)
        if errors:
            sys.exit(f"{path}: {schema_file} refuses it: " + "; ".join(
                f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5]))
        for e in body[entries]:
            k = key(e)
            if k in seen:
                sys.exit(f"{path}: {k} twice")
            seen.add(k)
            who, dimension, q = quantity(e)
            totals[(who, dimension)] += q
            n += 1
    return n, totals


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--aws", action="append", default=[])
    ap.add_argument("--azure", action="append", default=[])
    ap.add_argument("--gcp", action="append", default=[])
    args = ap.parse_args()
    results = {}
    for d in args.aws:
        results.setdefault("aws", []).append(check_aws(d))
    for d in args.azure:
        results.setdefault("azure", []).append(check_schema(
            d, "azure-batch-usage-event.schema.json", "request",
            lambda e: (e["resourceId"], e["planId"], e["dimension"], e["effectiveStartTime"]),
            lambda e: (e["resourceId"], e["dimension"], e["quantity"])))
    for d in args.gcp:
        results.setdefault("gcp", []).append(check_schema(
            d, "gcp-services-report.schema.json", "operations",
            lambda e: e["operationId"],
            lambda e: (e["consumerId"], e["metricValueSets"][0]["metricName"],
                       int(e["metricValueSets"][0]["metricValues"][0]["int64Value"]))))
    for kind, found in results.items():
        totals = defaultdict(float)
        for n, t in found:
            for k, q in t.items():
                totals[k] += q
        print(f"{kind} records: {sum(n for n, _ in found)}")
        for (who, dimension), q in sorted(totals.items()):
            print(f"{kind} total\t{who}\t{dimension}\t{q:g}")
    for (who, dimension, tags), q in sorted(ALLOCATED.items()):
        print(f"aws allocated\t{who}\t{dimension}\t{tags}\t{q}")


if __name__ == "__main__":
    main()
