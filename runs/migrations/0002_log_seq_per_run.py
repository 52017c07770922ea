"""Log lines get a per-run `seq`; the old global counter stays as the row's key, `id`.

A global sequence number is a poor cursor on PostgreSQL: a line numbered 11 can commit after a
reader that saw 12 moved on. Numbers reserved per run from the run's row commit in order.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0001_initial"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="logentry", name="log_run_seq"),
        migrations.RemoveIndex(model_name="logentry", name="log_step_seq"),
        migrations.RenameField(model_name="logentry", old_name="seq", new_name="id"),
        migrations.AddField(
            model_name="run",
            name="log_seq",
            field=models.PositiveBigIntegerField(
                default=0,
                help_text="The seq of the run's last log line (runs.services.logs_append).",
            ),
        ),
        migrations.AddField(
            model_name="logentry",
            name="seq",
            field=models.PositiveBigIntegerField(
                default=0, help_text="1, 2, 3 ... within the run."
            ),
            preserve_default=False,
        ),
        migrations.AlterModelOptions(name="logentry", options={"ordering": ["run_id", "seq"]}),
    ]
