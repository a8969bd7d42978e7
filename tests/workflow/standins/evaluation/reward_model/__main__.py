"""Stand-in: `python -m evaluation.reward_model train|serve ...`, its argv parsed by the real parser. train writes a
model directory's config.json; serve answers GET /health and POST /predict (a response's reward is its length) and,
as the real server, wants the bearer token when $REWARD_SERVER_TOKEN is set."""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from _standin import real_module, record

record(f"reward_model.{sys.argv[1]}")
args = real_module("evaluation.reward_model.__main__").parse_args(sys.argv[1:])
if args.command == "train":
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "config.json").write_text('{"num_labels": 1}\n')
    sys.exit(0)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self._send(200 if self.path == "/health" else 404, {"status": "ok", "model": args.model})

    def do_POST(self):
        token = os.environ.get("REWARD_SERVER_TOKEN")  # as the real server: required when set
        if token and self.headers.get("Authorization") != f"Bearer {token}":
            return self._send(401, {"error": "authorization: missing or wrong token"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._send(200, {"rewards": [float(len(r)) for r in body["responses"]]})

    def _send(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
