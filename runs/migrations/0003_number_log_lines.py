"""Numbers existing log lines 1, 2, 3 ... per run, in the order they were written."""

import sqlite3

from django.db import migrations


def number_lines(apps, schema_editor):
    connection = schema_editor.connection
    quote = connection.ops.quote_name
    log = quote(apps.get_model("runs", "LogEntry")._meta.db_table)
    run = quote(apps.get_model("runs", "Run")._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite" and sqlite3.sqlite_version_info < (3, 33):
            _number_in_python(apps)
        else:
            cursor.execute(
                f"UPDATE {log} SET seq = numbered.n FROM ("
                f" SELECT id, ROW_NUMBER() OVER (PARTITION BY run_id ORDER BY id) AS n FROM {log}"
                f") AS numbered WHERE {log}.id = numbered.id"
            )
        cursor.execute(
            f"UPDATE {run} SET log_seq = (SELECT MAX(seq) FROM {log} WHERE run_id = {run}.number)"
            f" WHERE number IN (SELECT run_id FROM {log})"
        )


def _number_in_python(apps) -> None:
    LogEntry = apps.get_model("runs", "LogEntry")
    batch, run_id, n = [], None, 0
    for entry in LogEntry.objects.only("id", "run_id").order_by("run_id", "id").iterator():
        n = n + 1 if entry.run_id == run_id else 1
        run_id, entry.seq = entry.run_id, n
        batch.append(entry)
        if len(batch) >= 2000:
            LogEntry.objects.bulk_update(batch, ["seq"])
            batch = []
    LogEntry.objects.bulk_update(batch, ["seq"])


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0002_log_seq_per_run"),
    ]

    operations = [
        migrations.RunPython(number_lines, migrations.RunPython.noop, elidable=True),
    ]
