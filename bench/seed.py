"""Seeds a benchmark's tenant over HTTP (bench/throughput.sh, bench/two-process.sh).

  seed.py URL KEY subs N OUT     a plan "bench" (seats 1-20, meter api_calls) and
                                 N active subscriptions on it
  seed.py URL KEY capped N OUT   a plan "capped" (meter api_calls, hard cap 100)
                                 and N active subscriptions on it

Writes the subscriptions' ids to OUT, one a line, in creation order.
"""
import json
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

url, key, what, n, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]


def call(method, path, body=None):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None, method=method,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


if what == "subs":
    plan = call("POST", "/v1/plans", {"code": "bench", "name": "Bench", "currency": "EUR", "interval": "month",
        "base_price": "10.00", "seat_price": "2.50", "seats": {"min": 1, "max": 20},
        "meters": [{"key": "api_calls", "reset": "monthly"}]})
    extra = {"seats": 3}
elif what == "capped":
    plan = call("POST", "/v1/plans", {"code": "capped", "name": "Capped", "currency": "EUR", "interval": "month",
        "base_price": "10.00", "meters": [{"key": "api_calls", "reset": "monthly", "hard_cap": "100"}]})
    extra = {}
else:
    sys.exit(f"seed.py: unknown {what!r} (subs or capped)")


def one(i):
    sub = call("POST", "/v1/subscriptions", {"customer_id": f"cus_{what}_{i}", "plan_id": plan["id"], **extra})
    call("POST", f"/v1/subscriptions/{sub['id']}/activate")
    return sub["id"]


with ThreadPoolExecutor(8) as ex:
    ids = list(ex.map(one, range(n)))
with open(out, "w") as f:
    f.write("\n".join(ids) + "\n")
