#!/usr/bin/env python3
"""A usage producer that signs its events for meterflow, in plain Python (standard library only).

It builds native meterflow events, signs each one with HMAC-SHA256 over the canonical form
described in docs/event-contract.md ("Integrity"), and writes them as JSON lines to stdout. Pipe
them to your Kafka producer of choice (keyed by customer_id), or to `meterflow run -i -`.

    METERFLOW_KEY=... python3 signing_producer.py --key-id 2026-11 --customer acme \
        --contract acme-2026 --sku api_calls --unit requests --events 100 > signed.jsonl

The functions `canonical_form` and `sign` are what a producer in another stack needs to port.
"""

import argparse
import datetime
import decimal
import hashlib
import hmac
import json
import os
import sys

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def shortest_decimal(quantity) -> str:
    """The quantity as the shortest exact decimal: 12.50 -> 12.5, 3.0 -> 3, -0.250 -> -0.25."""
    d = decimal.Decimal(str(quantity))
    if d == 0:
        return "0"
    return format(d.normalize(), "f")


def epoch_millis(timestamp: str) -> int:
    """An RFC 3339 timestamp as milliseconds since the Unix epoch."""
    t = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return (t - EPOCH) // datetime.timedelta(milliseconds=1)


def compact(value) -> str:
    """JSON text of a value exactly as this producer writes it in the event."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def canonical_form(event: dict) -> bytes:
    """The bytes the checksum and the signature cover (docs/event-contract.md, "Integrity")."""
    metadata = event.get("metadata", {})
    attributes = metadata.get("attributes", {})
    attrs = ""
    if attributes:
        attrs = "{" + ",".join(
            compact(k) + ":" + compact(attributes[k]) for k in sorted(attributes)
        ) + "}"
    correction = event.get("correction")
    lines = [
        "meterflow.v1",
        "event_id=" + event["event_id"],
        "customer_id=" + event["customer_id"],
        "contract_id=" + event["contract_id"],
        "sku=" + event["sku"],
        "unit=" + event["unit"],
        "quantity=" + shortest_decimal(event["quantity"]),
        "timestamp=" + str(epoch_millis(event["timestamp"])),
        "environment=" + event["environment"],
        "region=" + metadata.get("region", ""),
        "plan=" + metadata.get("plan", ""),
        "marketplace=" + metadata.get("marketplace", ""),
        "attributes=" + attrs,
        "correction="
        + (correction["action"] + ":" + correction["original_event_id"] if correction else ""),
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def sign(event: dict, key_id: str, key: bytes) -> dict:
    """The event with `signature` set: hex HMAC-SHA256 of its canonical form under `key`."""
    mac = hmac.new(key, canonical_form(event), hashlib.sha256).hexdigest()
    return {**event, "signature": {"key_id": key_id, "hmac_sha256": mac}}


def events(args):
    """A small varied stream: decimal and whole quantities, time zones, metadata, a void."""
    start = datetime.datetime.fromisoformat(args.start.replace("Z", "+00:00"))
    quantities = ["3", "12.50", "0.125", "7", "1000.000"]
    for i in range(args.events):
        at = start + datetime.timedelta(seconds=37 * i, milliseconds=i % 1000)
        zone = datetime.timezone(datetime.timedelta(hours=(i % 3) - 1))
        event = {
            "event_id": f"{args.prefix}-{i:06d}",
            "customer_id": args.customer,
            "contract_id": args.contract,
            "sku": args.sku,
            "unit": args.unit,
            "quantity": quantities[i % len(quantities)],
            "timestamp": at.astimezone(zone).isoformat(timespec="milliseconds"),
            "environment": "production",
        }
        if i % 4 == 1:
            event["metadata"] = {
                "region": "eu-west-1",
                "attributes": {"user_id": f"u{i % 7}", "batch": i % 5, "ratio": 0.5},
            }
        yield event
        if i % 10 == 9:
            yield {
                **event,
                "event_id": f"{args.prefix}-{i:06d}-void",
                "quantity": "-" + event["quantity"],
                "correction": {"action": "void", "original_event_id": event["event_id"]},
            }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--key-id", required=True)
    p.add_argument("--key-env", default="METERFLOW_KEY", help="variable holding the HMAC key")
    p.add_argument("--customer", required=True)
    p.add_argument("--contract", required=True)
    p.add_argument("--sku", required=True)
    p.add_argument("--unit", required=True)
    p.add_argument("--events", type=int, default=100)
    p.add_argument("--start", default="2026-11-01T00:00:00Z")
    p.add_argument("--prefix", default="py")
    args = p.parse_args()
    key = os.environ.get(args.key_env)
    if not key:
        sys.exit(f"set {args.key_env} to the HMAC key configured for {args.key_id}")
    for event in events(args):
        print(compact(sign(event, args.key_id, key.encode("utf-8"))))


if __name__ == "__main__":
    main()
