#!/usr/bin/env bash
# Fuzzes the REST API against its own OpenAPI schema (issue: REST API), one operation at a
# time and in chains of calls along the links schemathesis infers from the schema (the
# stateful phase): a fresh database, the examples loaded, an authenticated superuser token,
# runs and an approval to work on (.ci/fuzz_seed.py, .ci/schemathesis.toml), the ASGI
# server, then schemathesis.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
port=${SCHEMATHESIS_PORT:-8765}
export STEPWISE_VAR_DIR="$work" DATABASE_URL="sqlite:///$work/api.sqlite3"
export STEPWISE_THROTTLE_USER=100000/min STEPWISE_THROTTLE_ANON=100000/min
py=.venv/bin/python
$py manage.py migrate -v0
$py manage.py runbooks sync examples >/dev/null
$py manage.py shell -c "from django.contrib.auth.models import User; User.objects.create_superuser('fuzz', 'fuzz@example.com', 'fuzz-password-123')"
token=$($py manage.py create_token fuzz --name schemathesis 2>/dev/null)
$py manage.py shell <.ci/fuzz_seed.py
# The server's own log (a 404 line per fuzzed URL) goes to a file; schemathesis reports failures.
$py -m uvicorn config.asgi:application --port "$port" --log-level warning \
  >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
.venv/bin/schemathesis --config-file .ci/schemathesis.toml run "http://127.0.0.1:$port/api/schema/" \
  --wait-for-schema 30 \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-30}" \
  --workers 2 \
  --seed 1 \
  || { echo "-- the server's log, last lines:"; tail -n 60 "$work/server.log"; exit 1; }
