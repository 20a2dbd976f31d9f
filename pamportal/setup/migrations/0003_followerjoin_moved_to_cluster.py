"""FollowerJoin now lives in the cluster app (cluster 0002 takes it over). Its table
stays where it is: this removes the model from the setup app's state only."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('setup', '0002_followerjoin'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name='FollowerJoin')],
            database_operations=[],
        ),
    ]
