"""Data for schemathesis to work on (run by .ci/schemathesis.sh with `manage.py shell`).

Without it, every operation on a run, an approval or an artifact is fuzzed against ids that
do not exist and stops at a 404. Makes, through the services and the workers' own code:
run #1, finished, with an artifact (#1); run #2 waiting on approval #1, which the fuzzing
user may decide; run #3, queued.
"""

import tempfile

from django.contrib.auth.models import Group, User

from runbooks.models import Runbook
from runs import runner
from runs.services import run_create

fuzz = User.objects.get(username="fuzz")
fuzz.groups.add(Group.objects.get_or_create(name="approvers")[0])


def start(slug: str, **params: object):
    runbook = Runbook.objects.get(slug=slug)
    return run_create(runbook=runbook, params=params, user=fuzz, origin="cli")


cache = tempfile.mkdtemp(prefix="stepwise-fuzz-")
runner.work(start("disk-cleanup", path=cache).pk)
runner.work(start("approved-restart").pk)
start("parallel-fanout")
