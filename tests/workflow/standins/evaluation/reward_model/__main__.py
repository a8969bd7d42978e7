"""Stand-in: python -m evaluation.reward_model train --out DIR ... | serve --model DIR --host H --port P"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from _standin import arg, record, write

record(f"reward_model.{sys.argv[1]}")
if sys.argv[1] == "train":
    write(f"{arg('--out')}/config.json", '{"num_labels": 1}\n')
    sys.exit(0)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self._send(200 if self.path == "/health" else 404, {"status": "ok", "model": arg("--model")})

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


ThreadingHTTPServer((arg("--host"), int(arg("--port"))), Handler).serve_forever()
