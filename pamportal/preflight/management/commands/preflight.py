"""Run the preflight catalogue at the console and print what it found.

Exit status: 0 every check passed (or was skipped); 1 an error fails (the node may not
go on); 3 only warnings fail (each may be accepted with a reason in the web console,
so setup can go on after that). Argument errors exit 2, as argparse does.
"""

from __future__ import annotations

import shutil

from django.core.management.base import BaseCommand, CommandError

from pamportal.core.context import acting
from pamportal.preflight import conf, services
from pamportal.preflight.checks import BY_ID, CATALOGUE, CheckResult, CheckStatus, Severity, run_parallel

EXIT_ERRORS = 1
EXIT_WARNINGS = 3


class Command(BaseCommand):
    help = "Run the preflight checks on this node and print a table (exit 1: an error fails; 3: only warnings)."

    def add_arguments(self, parser):
        parser.add_argument("--address", help="the node address to check (default: PAM_NODE_ADDRESS)")
        parser.add_argument("--ntp", action="append", metavar="SERVER",
                            help="an NTP server (host or host:port); repeat for more (default: PAM_PREFLIGHT_NTP_SERVERS)")
        parser.add_argument("--skip", action="append", default=[], metavar="CHECK", help="a check id to leave out")
        parser.add_argument("--no-record", action="store_true",
                            help="do not record the run (no job, no audit events); useful before migrate")

    def handle(self, *args, address=None, ntp=None, skip=(), no_record=False, **options):
        overrides = {}
        if address is not None:
            overrides["address"] = address
        if ntp:
            overrides["ntp_servers"] = ntp
        unknown = sorted(set(skip) - set(BY_ID))
        if unknown:
            raise CommandError(f"no preflight check named {', '.join(unknown)}", returncode=2)
        context = conf.context_default(**overrides, skip=tuple(skip))
        if no_record:
            results = run_parallel(CATALOGUE, context)
            rows = [(c.id, c.result_severity(results[c.id]), results[c.id]) for c in CATALOGUE]
        else:
            with acting(actor_id=None, actor_name="console (manage.py preflight)"):
                run = services.preflight_run_sync(context=context)
            self.stdout.write(f"preflight run #{run.pk} (job #{run.job_id}), recorded for {context.address}\n")
            rows = [
                (o.check_id, o.severity, CheckResult(status=o.status, measured=o.measured, threshold=o.threshold,
                                                     message=o.message, remediation=o.remediation))
                for o in run.outcomes.order_by("position")
            ]
        self._table(rows)
        errors = [r for r in rows if r[2].failing and r[1] == Severity.ERROR]
        warnings = [r for r in rows if r[2].failing and r[1] != Severity.ERROR]
        for check_id, severity, result in errors + warnings:
            if result.remediation:
                self.stdout.write(f"  {check_id} ({severity}): {result.remediation}")
        if errors:
            raise CommandError(f"{len(errors)} error(s) block this node: {', '.join(r[0] for r in errors)}",
                               returncode=EXIT_ERRORS)
        if warnings:
            raise CommandError(f"{len(warnings)} warning(s) not accepted: {', '.join(r[0] for r in warnings)} "
                               f"(accept them with a reason on the preflight page)", returncode=EXIT_WARNINGS)
        self.stdout.write(self.style.SUCCESS("every check passed"))

    def _table(self, rows) -> None:
        # Cut long messages only on a terminal; a log or a pipe gets them whole.
        width = shutil.get_terminal_size((160, 20)).columns if self.stdout.isatty() else 10**6
        header = ("check", "severity", "status", "measured", "threshold", "message")
        table = [header] + [
            (cid, sev, CheckStatus(res.status).label, res.measured, res.threshold, res.message) for cid, sev, res in rows
        ]
        widths = [max(len(str(row[i])) for row in table) for i in range(5)]
        for row in table:
            line = "  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row[:5]))
            message = str(row[5])
            room = max(30, width - len(line) - 2)
            self.stdout.write(f"{line}  {message if len(message) <= room else message[:room - 1] + '…'}")
