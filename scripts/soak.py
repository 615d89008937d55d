#!/usr/bin/env python3
"""Bounded memory soak against a running p11vault: paced requests, RSS sampled from /proc.

    scripts/soak.py --data-dir DIR --url https://127.0.0.1:PORT --pid PID \
        [--mode churn|read] [--rate 40] [--workers 4] [--duration 300] [--sample 10]

churn: cycles of create (EC P-256, a new name each time), sign, delete, purge.
read:  sign and get on a fixed set of keys made before the clock starts.
Each worker is one keep-alive connection paced at rate/workers. The admin principal must hold
the Crypto User and Crypto Officer roles. Prints one line per sample: seconds, VmRSS KiB,
requests done, non-2xx count.
"""

import argparse
import base64
import http.client
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse

API = "api-version=2025-07-01"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


class Client:
    def __init__(self, url, ca, token):
        u = urllib.parse.urlparse(url)
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = False
        self.conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=60)
        self.token = token
        self.errors = 0
        self.done = 0

    def req(self, method, path, body=None):
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        sep = "&" if "?" in path else "?"
        self.conn.request(method, f"{path}{sep}{API}", body=data, headers=headers)
        r = self.conn.getresponse()
        r.read()
        self.done += 1
        if not 200 <= r.status < 300:
            self.errors += 1
            if self.errors <= 5:
                print(f"# {method} {path}: {r.status}", file=sys.stderr)
        return r.status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--mode", choices=["churn", "read"], default="churn")
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--duration", type=float, default=300.0)
    ap.add_argument("--sample", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=4, help="connections, each paced at rate/workers")
    ap.add_argument("--prefix", default=f"soak{os.getpid()}")
    a = ap.parse_args()

    token = open(os.path.join(a.data_dir, "admin.token")).read().strip()
    ca = os.path.join(a.data_dir, "ca.pem")
    digest = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    ec = {"kty": "EC-HSM", "crv": "P-256"}
    sign = {"alg": "ES256", "value": digest}
    clients = [Client(a.url, ca, token) for _ in range(a.workers)]

    def churn(w):
        i = 0
        while True:
            n = f"{a.prefix}-w{w}-{i}"
            yield ("POST", f"/keys/{n}/create", ec)
            yield ("POST", f"/keys/{n}//sign", sign)
            yield ("DELETE", f"/keys/{n}", None)
            yield ("DELETE", f"/deletedkeys/{n}", None)
            i += 1

    names = [f"{a.prefix}-r{i}" for i in range(10)]
    if a.mode == "read":
        for n in names:
            clients[0].req("POST", f"/keys/{n}/create", ec)

    def read(w):
        i = w
        while True:
            n = names[i % len(names)]
            yield ("POST", f"/keys/{n}//sign", sign)
            yield ("GET", f"/keys/{n}", None)
            i += 1

    steps = churn if a.mode == "churn" else read
    interval = a.workers / a.rate
    start = time.monotonic()
    stop = threading.Event()

    def worker(w):
        c = clients[w]
        nxt = start + w * interval / a.workers
        for method, path, body in steps(w):
            if stop.is_set():
                return
            now = time.monotonic()
            if nxt > now:
                time.sleep(nxt - now)
            nxt += interval
            c.req(method, path, body)

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(a.workers)]
    print(f"# mode={a.mode} rate={a.rate}/s workers={a.workers} duration={a.duration}s pid={a.pid}")
    print("t_s rss_kib requests errors")

    def line():
        done = sum(c.done for c in clients)
        errors = sum(c.errors for c in clients)
        print(f"{time.monotonic() - start:.0f} {rss_kib(a.pid)} {done} {errors}", flush=True)

    line()
    for t in threads:
        t.start()
    k = 1
    while time.monotonic() - start < a.duration:
        time.sleep(max(0.0, start + k * a.sample - time.monotonic()))
        k += 1
        line()
    stop.set()
    for t in threads:
        t.join()
    line()


if __name__ == "__main__":
    main()
