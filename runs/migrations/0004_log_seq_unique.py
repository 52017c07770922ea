from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0003_number_log_lines"),
    ]

    operations = [
        migrations.AddConstraint(
            model_name="logentry",
            constraint=models.UniqueConstraint(
                fields=("run", "seq"), name="unique_log_seq_per_run"
            ),
        ),
        migrations.AddIndex(
            model_name="logentry",
            index=models.Index(fields=["step", "seq"], name="log_step_seq"),
        ),
    ]
