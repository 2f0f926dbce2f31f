#!/usr/bin/env python3
"""A minimal HTTP agent for warpd's http runner (Python 3 standard library only).

It listens on 127.0.0.1:PORT for POST /dispatch, checks the fencing token header against the
document, and either

  --mode respond  answers {"outcome": "done"} (or "failed" for a payload with "fail": true):
                  warpd completes the work through the fencing check at once (works with the
                  in-memory store), or
  --mode later    answers 202 Accepted, works for --work-seconds, then completes the work
                  itself through warp.complete_work(lease_id, fencing_token, outcome, detail)
                  with `psql --dsn` (PostgreSQL store only). A completion after the lease was
                  lost and the work re-leased is refused ("overtaken"): the agent logs it and
                  drops its result.

An optional --token-file requires "Authorization: Bearer <token>" (warpd's bearer_token_file).
"""
import argparse
import http.server
import json
import subprocess
import sys
import threading
import time


def complete_later(args, doc):
    time.sleep(args.work_seconds)
    outcome = "failed" if doc.get("payload", {}).get("fail") is True else "done"
    detail = json.dumps({"by": "http_agent.py"})
    # Parameters through psql variables (:'name' quotes them): no SQL assembled from values.
    sql = ("SELECT warp.complete_work(:'lease'::bigint, :'token'::bigint, :'outcome', "
           ":'detail'::jsonb)")
    result = subprocess.run(
        ["psql", args.dsn, "-XAtq", "-v", "ON_ERROR_STOP=1",
         "-v", f"lease={doc['lease_id']}", "-v", f"token={doc['fencing_token']}",
         "-v", f"outcome={outcome}", "-v", f"detail={detail}"],
        input=sql, capture_output=True, text=True)
    verdict = result.stdout.strip() or result.stderr.strip()
    print(f"work {doc['work_id']} lease {doc['lease_id']} token {doc['fencing_token']}: "
          f"{outcome} -> {verdict}", flush=True)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: warpd reuses its connections

    def reply(self, status, body):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        args = self.server.args
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        if self.path.split("?")[0] != "/dispatch":
            return self.reply(404, {"error": "not found"})
        if args.token and self.headers.get("Authorization") != f"Bearer {args.token}":
            return self.reply(401, {"error": "bad token"})
        try:
            doc = json.loads(raw)
        except ValueError:
            return self.reply(400, {"error": "not JSON"})
        if self.headers.get("Warp-Fencing-Token") != str(doc.get("fencing_token")):
            return self.reply(400, {"error": "fencing token header and body differ"})
        if not args.quiet:
            print(f"work {doc['work_id']} ({doc['kind']}) for {doc['agent']}: lease "
                  f"{doc['lease_id']} token {doc['fencing_token']} until "
                  f"{doc['lease_expires_at']} payload {json.dumps(doc['payload'])}", flush=True)
        if args.mode == "respond":
            failed = doc.get("payload", {}).get("fail") is True
            return self.reply(200, {"outcome": "failed" if failed else "done",
                                    "detail": "http_agent.py"})
        threading.Thread(target=complete_later, args=(args, doc), daemon=True).start()
        return self.reply(202, None)

    def log_message(self, fmt, *a):  # one line per dispatch is printed above
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8088)
    p.add_argument("--mode", choices=["respond", "later"], default="respond")
    p.add_argument("--work-seconds", type=float, default=1.0)
    p.add_argument("--dsn", default="", help="libpq conninfo for --mode later")
    p.add_argument("--token-file", default="")
    p.add_argument("--quiet", action="store_true", help="no line per dispatch (benchmarks)")
    args = p.parse_args()
    if args.mode == "later" and not args.dsn:
        p.error("--mode later needs --dsn")
    args.token = open(args.token_file).read().strip() if args.token_file else ""
    # A deep accept queue: warpd opens one connection per concurrent dispatch (the default of 5
    # would leave connections the kernel completed but this server never accepts).
    http.server.ThreadingHTTPServer.request_queue_size = 1024
    http.server.ThreadingHTTPServer.daemon_threads = True
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.args = args
    print(f"http_agent.py: listening on 127.0.0.1:{args.port} (mode {args.mode})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
