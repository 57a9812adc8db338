#!/usr/bin/env python3
"""A local stand-in for the three marketplace metering APIs, for `meterflow export --send` tests.

It answers as the services do and refuses what they would refuse, checking each request with the
services' own published models where one exists:

- AWS Marketplace Metering `BatchMeterUsage` (POST /, JSON 1.1): the Signature Version 4 of
  the request recomputed with botocore's own signer from the test's credentials; the body parsed
  back into the operation's input, checked by botocore's parameter validator against the model
  botocore ships, and serialized again by botocore's JSON serializer, which must give the same
  body and headers; records whole-hour and no older than 6 hours by this endpoint's clock
  (`--now`). Answers per record: `Success` (a resend of the same record gets its first id),
  `DuplicateRecord` (same customer, dimension and hour, another quantity), or
  `CustomerNotSubscribed` for customers the test refuses.
- Azure `batchUsageEvent` (POST /api/batchUsageEvent?api-version=2018-08-31) with a bearer token
  from the client-credentials grant (POST /<tenant>/oauth2/token): the body against the JSON
  Schema written from the REST reference; events no older than 24 hours; `Accepted` or
  `Duplicate` per resource, plan, dimension and hour.
- GCP `services.report` (POST /v1/services/<name>:report) with a bearer token: the body against
  its JSON Schema; operations recognised by id; a metric outside the service is a report error.

Tokens: Azure's client-credentials grant (POST /<tenant>/oauth2/token; the client secret, or a client
assertion: its RS256 signature verified with a certificate registered by `x5t` thumbprint, its audience,
issuer, subject, lifetime and unique `jti` checked), Azure managed identity
(GET /metadata/identity/oauth2/token with `Metadata: true`, as the instance metadata service),
and Google's JWT bearer grant (POST /gcp/token: the assertion's RS256 signature verified with the
service account's public key, its issuer, audience, scope and lifetime checked). Azure and GCP
requests must carry a token this endpoint issued (or `ENDPOINT_GCP_TOKEN`).

POST /control takes `{"refuse": [customers], "unavailable": n, "throttle": n, "hang": n}` (the
next n requests answer 503, or AWS `ThrottlingException`; the next n AWS requests are taken and
billed, then answered only a minute later: a sender killed meanwhile never learns it), and optionally `"gcp_key_file": path`
(writes a new service account key there, its `token_uri` this endpoint), `"azure_certificate_file": path` (writes a
certificate and its key there and registers the certificate on the offer's application) and `"token_uses": n`
(each token issued from then on is good for n requests, then answered 401). GET /received returns what was accepted:
`{"totals": {"aws|customer|dimension": quantity, ...}, "requests": n, "problems": [...]}`, where
`problems` lists every request refused for its shape or signature (a correct sender has none);
`tokens_issued` counts tokens per grant.

    marketplace_endpoint.py --port-file F --now 2026-12-01T00:20:00Z
    env: ENDPOINT_AWS_KEY_ID, ENDPOINT_AWS_SECRET, ENDPOINT_AZURE_TENANT, ENDPOINT_AZURE_CLIENT_ID,
         ENDPOINT_AZURE_SECRET, ENDPOINT_GCP_TOKEN, ENDPOINT_AZURE_MI_CLIENT_ID (optional)
"""

import argparse
import base64
import calendar
import datetime
import hmac
import json
import os
import sys
import threading
import time
import urllib.parse
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.abspath(__file__))
AZURE_RESOURCE = "20e940b3-4c77-4b0b-9a53-9e16a1b010a7"
HOUR = 3600

lock = threading.Lock()
state = {
    "refuse": set(),
    "unavailable": 0,
    "throttle": 0,
    "hang": 0,
    "requests": 0,
    "problems": [],
    "totals": defaultdict(float),
    "aws": {},  # (product, customer, dimension, ts) -> (quantity, id)
    "azure": set(),  # (resource, plan, dimension, hour)
    "gcp": set(),  # operation ids
    "tokens": {},  # token -> requests it may still make (None: unlimited)
    "token_uses": None,
    "tokens_issued": defaultdict(int),
    "gcp_key": None,  # (private key, client_email, token_uri)
    "azure_certificates": {},  # x5t (SHA-1 thumbprint, base64url) -> certificate registered on the offer's app
    "assertion_ids": set(),  # the jti of every client assertion taken (a replay is refused)
}


def issue(grant):
    token = f"{grant}-{uuid.uuid4().hex}"
    with lock:
        state["tokens"][token] = state["token_uses"]
        state["tokens_issued"][grant] += 1
    return token


class Refused(Exception):
    def __init__(self, status, body, problem=True):
        super().__init__(json.dumps(body))
        self.status, self.body, self.problem = status, body, problem


def epoch(text):
    return calendar.timegm(datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").timetuple())


def within(ts, max_age, now):
    if ts % HOUR:
        raise Refused(400, {"message": f"{ts} is not the start of an hour"})
    if ts < now - max_age or ts > now + 300:
        raise Refused(400, {"message": f"timestamp {ts} is out of bounds at {now}"})


def aws(handler, body, now):
    import botocore.session
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from botocore.serialize import create_serializer
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("meteringmarketplace")
    op = model.operation_model("BatchMeterUsage")
    h = {k.lower(): v for k, v in handler.headers.items()}
    # The signature, recomputed by botocore over the headers the client says it signed.
    auth = h.get("authorization", "")
    try:
        parts = dict(p.strip().split("=", 1) for p in auth.split(" ", 1)[1].split(","))
        key_id, date, region, service, _ = parts["Credential"].split("/")
    except (IndexError, ValueError, KeyError):
        raise Refused(403, {"__type": "MissingAuthenticationTokenException", "message": "no SigV4 authorization"})
    if key_id != os.environ["ENDPOINT_AWS_KEY_ID"]:
        raise Refused(403, {"__type": "UnrecognizedClientException", "message": "unknown access key"}, problem=False)
    if service != model.metadata["signingName"] or region != "us-east-1":
        raise Refused(403, {"__type": "InvalidSignatureException", "message": f"signed for {service} in {region}"})
    signed = parts["SignedHeaders"].split(";")
    for needed in ("host", "x-amz-date", "x-amz-target", "content-type"):
        if needed not in signed:
            raise Refused(403, {"__type": "InvalidSignatureException", "message": f"{needed} is not signed"})
    amz_date = h["x-amz-date"]
    skew = abs(calendar.timegm(datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").timetuple())
               - calendar.timegm(datetime.datetime.now(datetime.timezone.utc).timetuple()))
    if skew > 900 or date != amz_date[:8]:
        raise Refused(403, {"__type": "InvalidSignatureException", "message": "request time too skewed"})
    req = AWSRequest(method="POST", url=f"http://{h['host']}{handler.path}", data=body,
                     headers={k: h[k] for k in signed})
    req.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(key_id, os.environ["ENDPOINT_AWS_SECRET"], h.get("x-amz-security-token")),
                       service, region)
    expected = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
    if not hmac.compare_digest(expected, parts.get("Signature", "")):
        raise Refused(403, {"__type": "InvalidSignatureException",
                            "message": "The request signature we calculated does not match the signature you provided"},
                      problem=False)
    # The body: the operation's input, validated and serialized again by botocore.
    wire = json.loads(body)
    params = json.loads(body)
    for r in params.get("UsageRecords", []):
        if isinstance(r.get("Timestamp"), (int, float)):
            r["Timestamp"] = datetime.datetime.fromtimestamp(r["Timestamp"], datetime.timezone.utc)
    report = ParamValidator().validate(params, op.input_shape)
    if report.has_errors():
        raise Refused(400, {"__type": "ValidationException", "message": report.generate_report()})
    again = create_serializer("json").serialize_to_request(params, op)
    if json.loads(again["body"]) != wire:
        raise Refused(400, {"__type": "SerializationException", "message": f"botocore sends {again['body']!r}"})
    for k, v in again["headers"].items():
        if h.get(k.lower()) != v:
            raise Refused(400, {"__type": "SerializationException", "message": f"{k}: {h.get(k.lower())!r}, not {v!r}"})
    with lock:
        if state["throttle"] > 0:
            state["throttle"] -= 1
            raise Refused(400, {"__type": "com.amazonaws.awsmpmeteringservice#ThrottlingException",
                                "message": "Rate exceeded"}, problem=False)
    results = []
    for r in wire["UsageRecords"]:
        within(r["Timestamp"], 6 * HOUR, now)
        who = r.get("CustomerIdentifier") or r.get("CustomerAWSAccountId")
        key = (wire["ProductCode"], who, r["Dimension"], r["Timestamp"])
        with lock:
            if who in state["refuse"]:
                results.append({"UsageRecord": r, "Status": "CustomerNotSubscribed"})
                continue
            if key in state["aws"]:
                q, rid = state["aws"][key]
                results.append({"UsageRecord": r, "MeteringRecordId": rid,
                                "Status": "Success" if q == r["Quantity"] else "DuplicateRecord"})
                continue
            rid = str(uuid.uuid4())
            state["aws"][key] = (r["Quantity"], rid)
            state["totals"][f"aws|{who}|{r['Dimension']}"] += r["Quantity"]
        results.append({"UsageRecord": r, "MeteringRecordId": rid, "Status": "Success"})
    with lock:
        hang = state["hang"] > 0
        state["hang"] -= hang
    if hang:
        time.sleep(60)
    return {"Results": results, "UnprocessedRecords": []}


def schema_errors(schema_file, body):
    import jsonschema

    with open(os.path.join(ROOT, "schemas", schema_file)) as f:
        schema = json.load(f)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(body), key=lambda e: e.path)
    return "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])


def bearer(handler, fixed=None):
    """The request's bearer token must be `fixed` or one this endpoint issued and not used up."""
    auth = handler.headers.get("Authorization") or ""
    token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
    if token is not None and token == fixed:
        return
    with lock:
        left = state["tokens"].get(token, 0) if token else 0
        if left is None:
            return
        if left > 0:
            state["tokens"][token] = left - 1
            return
    # An expired token is no problem of the sender's shape: it must fetch a new one.
    raise Refused(401, {"error": {"code": 401, "message": "invalid, expired or missing bearer token"}},
                  problem=token is None)


def b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def write_gcp_key(path, token_uri):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    email = "meterflow-metering@acme-saas.iam.gserviceaccount.com"
    with open(path, "w") as f:
        json.dump({"type": "service_account", "project_id": "acme-saas", "private_key_id": uuid.uuid4().hex,
                   "private_key": pem, "client_email": email, "client_id": "1234567890",
                   "token_uri": token_uri}, f)
    state["gcp_key"] = (key, email, token_uri)


def gcp_token(body):
    """Google's JWT bearer grant: the assertion must be signed by the service account's key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    form = dict(urllib.parse.parse_qsl(body.decode()))
    if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or "assertion" not in form:
        raise Refused(400, {"error": "invalid_request", "error_description": f"unexpected form {sorted(form)}"})
    if state["gcp_key"] is None:
        raise Refused(400, {"error": "invalid_grant", "error_description": "no service account"})
    key, email, token_uri = state["gcp_key"]
    head, claims, signature = form["assertion"].split(".")
    try:
        key.public_key().verify(b64url(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except Exception:
        raise Refused(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
    header, c = json.loads(b64url(head)), json.loads(b64url(claims))
    now = calendar.timegm(datetime.datetime.now(datetime.timezone.utc).timetuple())
    wrong = [name for name, ok in [
        ("alg", header.get("alg") == "RS256"),
        ("iss", c.get("iss") == email),
        ("aud", c.get("aud") == token_uri),
        ("scope", "https://www.googleapis.com/auth/servicecontrol" in c.get("scope", "").split()),
        ("iat", abs(c.get("iat", 0) - now) <= 300),
        ("exp", 0 < c.get("exp", 0) - c.get("iat", 0) <= 3600),
    ] if not ok]
    if wrong:
        raise Refused(400, {"error": "invalid_grant", "error_description": f"bad JWT claims {wrong}: {header} {c}"})
    return {"access_token": issue("gcp-sa"), "expires_in": 3599, "token_type": "Bearer"}


def azure_managed_identity(handler, query):
    q = dict(urllib.parse.parse_qsl(query))
    want_client = os.environ.get("ENDPOINT_AZURE_MI_CLIENT_ID")
    if handler.headers.get("Metadata") != "true" or q.get("api-version") != "2018-02-01" \
            or q.get("resource") != AZURE_RESOURCE or (want_client and q.get("client_id") != want_client):
        raise Refused(400, {"error": "invalid_request",
                            "error_description": f"Metadata header {handler.headers.get('Metadata')!r}, query {q}"})
    return {"access_token": issue("azure-mi"), "expires_in": "86399", "resource": AZURE_RESOURCE,
            "token_type": "Bearer"}


def write_azure_certificate(path):
    """A self-signed certificate and its key (the key first, as `az ad sp create-for-rbac
    --create-cert` writes them), registered on the offer's application."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meterflow-metering")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365)).sign(key, hashes.SHA256()))
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    x5t = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA1())).decode().rstrip("=")
    state["azure_certificates"][x5t] = cert


def azure_certificate_proof(form, token_url):
    """A client assertion as Entra ID checks it: signed RS256 by a certificate registered on the
    application (named by `x5t`), for this token endpoint, by and about the client, short-lived,
    its `jti` never seen before."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
        raise Refused(400, {"error": "invalid_request",
                            "error_description": f"client_assertion_type {form.get('client_assertion_type')!r}"})
    head, claims, signature = form["client_assertion"].split(".")
    header, c = json.loads(b64url(head)), json.loads(b64url(claims))
    cert = state["azure_certificates"].get(header.get("x5t"))
    if cert is None:
        raise Refused(401, {"error": "invalid_client", "error_description":
                            f"AADSTS700027: The certificate with identifier used to sign the client assertion "
                            f"is not registered on application. [Reason - The key was not found., Thumbprint of "
                            f"key used by client: '{header.get('x5t')}']"}, problem=False)
    try:
        cert.public_key().verify(b64url(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except Exception:
        raise Refused(401, {"error": "invalid_client",
                            "error_description": "AADSTS700027: Client assertion contains an invalid signature."})
    sha256 = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA256())).decode().rstrip("=")
    now = calendar.timegm(datetime.datetime.now(datetime.timezone.utc).timetuple())
    client = os.environ["ENDPOINT_AZURE_CLIENT_ID"]
    wrong = [name for name, ok in [
        ("alg", header.get("alg") == "RS256"),
        ("x5t#S256", header.get("x5t#S256", sha256) == sha256),
        ("aud", c.get("aud") == token_url),
        ("iss", c.get("iss") == client),
        ("sub", c.get("sub") == client),
        ("jti", bool(c.get("jti")) and c.get("jti") not in state["assertion_ids"]),
        ("nbf", c.get("nbf", 0) <= now + 300),
        ("exp", now - 300 <= c.get("exp", 0) and 0 < c.get("exp", 0) - c.get("nbf", now) <= 3600),
    ] if not ok]
    if wrong:
        raise Refused(400, {"error": "invalid_client", "error_description": f"bad client assertion {wrong}: {header} {c}"})
    state["assertion_ids"].add(c["jti"])


def azure_token(body, token_url):
    form = dict(urllib.parse.parse_qsl(body.decode()))
    if form.get("grant_type") != "client_credentials" or form.get("resource") != AZURE_RESOURCE:
        raise Refused(400, {"error": "invalid_request", "error_description": f"unexpected form {sorted(form)}"})
    if form.get("client_id") != os.environ["ENDPOINT_AZURE_CLIENT_ID"]:
        raise Refused(400, {"error": "unauthorized_client",
                            "error_description": f"AADSTS700016: Application {form.get('client_id')!r} not found"})
    if "client_assertion" in form:
        if "client_secret" in form:
            raise Refused(400, {"error": "invalid_request", "error_description": "both a secret and an assertion"})
        with lock:
            azure_certificate_proof(form, token_url)
        return {"token_type": "Bearer", "expires_in": "3599", "access_token": issue("azure-certificate")}
    if form.get("client_secret") != os.environ["ENDPOINT_AZURE_SECRET"]:
        raise Refused(401, {"error": "invalid_client",
                            "error_description": "AADSTS7000215: Invalid client secret provided."}, problem=False)
    return {"token_type": "Bearer", "expires_in": "3599", "access_token": issue("azure-secret")}


def azure(handler, body, now):
    bearer(handler)
    payload = json.loads(body)
    problems = schema_errors("azure-batch-usage-event.schema.json", payload)
    if problems:
        raise Refused(400, {"message": problems, "code": "BadArgument"})
    result = []
    for e in payload["request"]:
        key = (e["resourceId"], e["planId"], e["dimension"], e["effectiveStartTime"])
        out = dict(e, usageEventId=str(uuid.uuid4()),
                   messageTime=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        ts = epoch(e["effectiveStartTime"])
        if ts < now - 24 * HOUR:
            out.update(status="Expired", error={"message": "effectiveStartTime is more than 24 hours ago"})
        else:
            within(ts, 24 * HOUR, now)
            with lock:
                if key in state["azure"]:
                    out.update(status="Duplicate")
                else:
                    state["azure"].add(key)
                    state["totals"][f"azure|{e['resourceId']}|{e['dimension']}"] += e["quantity"]
                    out.update(status="Accepted")
        result.append(out)
    return {"result": result, "count": len(result)}


def gcp(handler, body, service):
    bearer(handler, os.environ["ENDPOINT_GCP_TOKEN"])
    payload = json.loads(body)
    problems = schema_errors("gcp-services-report.schema.json", payload)
    if problems:
        raise Refused(400, {"error": {"code": 400, "message": problems}})
    errors = []
    for op in payload["operations"]:
        for mv in op["metricValueSets"]:
            if not mv["metricName"].startswith(service + "/"):
                errors.append({"operationId": op["operationId"],
                               "status": {"code": 3, "message": f"metric {mv['metricName']} is not of {service}"}})
                break
        else:
            with lock:
                if op["operationId"] in state["gcp"]:
                    continue
                state["gcp"].add(op["operationId"])
                for mv in op["metricValueSets"]:
                    for v in mv["metricValues"]:
                        state["totals"][f"gcp|{op['consumerId']}|{mv['metricName']}"] += int(v["int64Value"])
    return {"reportErrors": errors, "serviceConfigId": "2026-12-01r0"} if errors else {"serviceConfigId": "2026-12-01r0"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    now = 0

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path)
        if path.path == "/received":
            with lock:
                self.answer(200, {"totals": dict(state["totals"]), "requests": state["requests"],
                                  "problems": state["problems"], "tokens_issued": dict(state["tokens_issued"])})
        elif path.path == "/metadata/identity/oauth2/token":
            try:
                self.answer(200, azure_managed_identity(self, path.query))
            except Refused as r:
                with lock:
                    state["problems"].append(f"GET {self.path}: {r.body}")
                self.answer(r.status, r.body)
        else:
            self.answer(404, {"message": "not found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = urllib.parse.urlsplit(self.path)
        try:
            if path.path == "/control":
                with lock:
                    c = json.loads(body)
                    state["refuse"] = set(c.get("refuse", []))
                    state["unavailable"] = c.get("unavailable", 0)
                    state["throttle"] = c.get("throttle", 0)
                    state["hang"] = c.get("hang", 0)
                    if "token_uses" in c:
                        state["token_uses"] = c["token_uses"]
                    if "gcp_key_file" in c:
                        host, port = self.server.server_address[:2]
                        write_gcp_key(c["gcp_key_file"], f"http://{host}:{port}/gcp/token")
                    if "azure_certificate_file" in c:
                        write_azure_certificate(c["azure_certificate_file"])
                return self.answer(200, {})
            with lock:
                state["requests"] += 1
                if state["unavailable"] > 0:
                    state["unavailable"] -= 1
                    raise Refused(503, {"message": "service unavailable"}, problem=False)
            if path.path == "/gcp/token":
                return self.answer(200, gcp_token(body))
            if path.path.endswith("/oauth2/token"):
                tenant = path.path.split("/")[1]
                if tenant != os.environ["ENDPOINT_AZURE_TENANT"]:
                    raise Refused(400, {"error": "invalid_tenant", "error_description": f"tenant {tenant}"})
                host, port = self.server.server_address[:2]
                return self.answer(200, azure_token(body, f"http://{host}:{port}{path.path}"))
            if path.path == "/api/batchUsageEvent":
                if urllib.parse.parse_qs(path.query).get("api-version") != ["2018-08-31"]:
                    raise Refused(400, {"message": f"api-version in {path.query!r}"})
                return self.answer(200, azure(self, body, self.now))
            if path.path.startswith("/v1/services/") and path.path.endswith(":report"):
                return self.answer(200, gcp(self, body, path.path[len("/v1/services/"):-len(":report")]))
            if path.path == "/" and "X-Amz-Target" in self.headers:
                return self.answer(200, aws(self, body, self.now))
            raise Refused(404, {"message": f"no such API: POST {self.path}"})
        except Refused as r:
            if r.problem:
                with lock:
                    state["problems"].append(f"POST {self.path}: {r.body}")
            self.answer(r.status, r.body)
        except Exception as e:  # a malformed request is a problem of the sender
            with lock:
                state["problems"].append(f"POST {self.path}: {type(e).__name__}: {e}")
            self.answer(400, {"message": str(e)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--now", required=True, help="this endpoint's clock for time limits (RFC 3339)")
    a = ap.parse_args()
    Handler.now = epoch(a.now)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, a.port_file)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
