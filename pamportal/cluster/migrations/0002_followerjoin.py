"""FollowerJoin moves here from the setup app (setup 0003 gives it up), keeping its
table; then its bare ``job_id`` integer becomes a foreign key to the follow job on the
same column. A ``job_id`` naming no job (none is expected: jobs are not deleted) is
cleared first, as the pages already treated it: no job to show."""

import django.db.models.deletion
from django.db import migrations, models

JOIN_STATES = [
    ('opened', 'Bundle opened'), ('checked', 'Checks against the leader passed'),
    ('requested', 'Waiting for approvals on the leader'), ('joining', 'Joining (etcd member starting)'),
    ('joined', 'Joined'), ('failed', 'Failed'),
]


def forget_missing_jobs(apps, schema_editor):
    FollowerJoin = apps.get_model('cluster', 'FollowerJoin')
    Job = apps.get_model('jobs', 'Job')
    FollowerJoin.objects.filter(job_id__isnull=False).exclude(job_id__in=Job.objects.values('pk')).update(job_id=None)


class Migration(migrations.Migration):

    dependencies = [
        ('cluster', '0001_initial'),
        ('jobs', '0001_initial'),
        ('setup', '0003_followerjoin_moved_to_cluster'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='FollowerJoin',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('created_by', models.CharField(max_length=150)),
                        ('state', models.CharField(choices=JOIN_STATES, default='opened', max_length=16)),
                        ('own_address', models.CharField(max_length=253)),
                        ('leader_address', models.CharField(max_length=253)),
                        ('leader_ports', models.JSONField(default=dict)),
                        ('leader_version', models.CharField(max_length=32)),
                        ('cluster_id', models.CharField(max_length=128)),
                        ('bundle_id', models.CharField(max_length=64)),
                        ('bundle_expires', models.DateTimeField()),
                        ('ca_cert_pem', models.TextField()),
                        ('mek_fingerprint', models.CharField(max_length=64)),
                        ('sealed_join_token', models.TextField()),
                        ('sealed_poll_secret', models.TextField(blank=True)),
                        ('sealed_node_key', models.TextField(blank=True)),
                        ('csr_pem', models.TextField(blank=True)),
                        ('preflight', models.JSONField(blank=True, default=list)),
                        ('request_id', models.CharField(blank=True, max_length=64)),
                        ('last_status', models.JSONField(blank=True, default=dict)),
                        ('failure_reason', models.TextField(blank=True)),
                        ('job_id', models.BigIntegerField(blank=True, null=True)),
                    ],
                    options={
                        'ordering': ['-pk'],
                        'db_table': 'setup_followerjoin',
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(forget_missing_jobs, migrations.RunPython.noop),
        # Same column throughout: name the column explicitly, rename the field (no
        # change in the table), then make it a foreign key (adds its constraint and index).
        migrations.AlterField(
            model_name='followerjoin',
            name='job_id',
            field=models.BigIntegerField(blank=True, null=True, db_column='job_id'),
        ),
        migrations.RenameField(
            model_name='followerjoin',
            old_name='job_id',
            new_name='job',
        ),
        migrations.AlterField(
            model_name='followerjoin',
            name='job',
            field=models.ForeignKey(blank=True, db_column='job_id', null=True,
                                    on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='jobs.job'),
        ),
    ]
