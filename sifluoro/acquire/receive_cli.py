"""``sifluoro receive``: the options, and the receiver run until SIGTERM/SIGINT. Kept apart from
:mod:`sifluoro.acquire.receiver` so building the command line imports no network or imaging
code (``sifluoro --help`` stays fast)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from sifluoro.acquire.receiver_settings import ReceiverSettings
from sifluoro.argtypes import budget_ms
from sifluoro.config import Settings
from sifluoro.errors import ConfigError
from sifluoro.stopping import stop_on_signals

log = logging.getLogger("sifluoro.acquire.receiver")


def add_receive_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sifluoro receive``."""
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument("--ae-title", required=True, help="this receiver's AE title")
    parser.add_argument("--spool", type=Path, required=True, metavar="DIR",
                        help="folder where received instances are stored")
    parser.add_argument("--allow-ae", action="append", default=[], metavar="AE",
                        help="accept associations only from this calling AE title (repeatable)")
    parser.add_argument("--events", type=Path, metavar="EVENTS.jsonl",
                        help="one events file for all studies (default: DIR/<study>/events.jsonl)")
    parser.add_argument("--summary", type=Path, metavar="SUMMARY.json",
                        help="also write the summary of the study updated last here (one "
                             "study at a time); each study's own is DIR/<study>/summary.json")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default %(default)s)")
    parser.add_argument("--tls-cert", type=Path, metavar="CERT.pem", help="server certificate: enables TLS")
    parser.add_argument("--tls-key", type=Path, metavar="KEY.pem", help="server private key")
    parser.add_argument("--tls-ca", type=Path, metavar="CA.pem",
                        help="require client certificates signed by this CA")
    d = ReceiverSettings(0, "X", Path("."))
    parser.add_argument("--max-associations", type=int, default=d.max_associations,
                        help="simultaneous associations (default %(default)s)")
    parser.add_argument("--max-pdu", type=int, default=d.max_pdu_bytes, metavar="BYTES",
                        help="largest PDU received, 0 for no limit (default %(default)s)")
    parser.add_argument("--max-instance-mb", type=float, default=d.max_instance_mb,
                        help="largest instance accepted, in MiB (default %(default)s)")
    parser.add_argument("--spool-quota-mb", type=float, metavar="MB",
                        help="most MiB of instances the spool may hold (default: no quota)")
    parser.add_argument("--drain-timeout-s", type=float, default=d.drain_timeout_s,
                        help="on SIGTERM or Ctrl-C, how long open associations may finish (a "
                             "second signal stops at once; default %(default)s)")
    parser.add_argument("--budget-ms", type=budget_ms, default=Settings().latency_budget_ms,
                        help="per-frame latency budget for image work (default %(default)s ms)")


def add_receive_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``receive`` to the ``sifluoro`` command's subparsers."""
    p = subparsers.add_parser("receive", help="DICOM C-STORE receiver feeding the live pipeline")
    add_receive_arguments(p)
    p.set_defaults(func=run_receive)
    return p


def settings_from_args(args: argparse.Namespace) -> ReceiverSettings:
    return ReceiverSettings(
        port=args.port, ae_title=args.ae_title, spool=args.spool, allow_ae=tuple(args.allow_ae),
        events=args.events, summary=args.summary, host=args.host, tls_cert=args.tls_cert,
        tls_key=args.tls_key, tls_ca=args.tls_ca, max_associations=args.max_associations,
        max_pdu_bytes=args.max_pdu, max_instance_mb=args.max_instance_mb,
        spool_quota_mb=args.spool_quota_mb, drain_timeout_s=args.drain_timeout_s)


def run_receive(args: argparse.Namespace) -> int:
    """Run the receiver until SIGTERM/SIGINT, then drain; 0 on a clean stop, 1 when some
    outputs (events, summaries, state) could not be written."""
    from sifluoro.acquire.receiver import Receiver
    from sifluoro.outfiles import check_writable

    # found at the first study, a service would run for days writing nothing a reader can use
    check_writable(events=args.events, summary=args.summary)
    stop = stop_on_signals()  # a second signal ends a drain at once (see _drain)
    try:
        receiver = Receiver(settings_from_args(args),
                            pipeline_settings=Settings(latency_budget_ms=args.budget_ms))
        receiver.start()
    except OSError as exc:  # port taken, spool not writable
        print(f"sifluoro: cannot start the receiver: {exc}", file=sys.stderr)
        return 2
    print(f"sifluoro receive: listening on {receiver.settings.host}:{receiver.port} as "
          f"{receiver.settings.ae_title}", flush=True)
    while not stop.wait(0.5):
        pass
    _drain(receiver)
    print(f"sifluoro receive: stopped ({receiver.counts['stored']} stored, "
          f"{receiver.counts['duplicates']} duplicates, {receiver.counts['refused']} refused)",
          flush=True)
    if receiver.live.output_errors:
        print(f"sifluoro receive: {receiver.live.output_errors} event, summary or state "
              f"writes failed (a full disk?); see the log", file=sys.stderr, flush=True)
        return 1
    return 0


def _drain(receiver) -> None:
    """Stop the receiver; on a second SIGINT, exit at once (130). The drain may wait minutes
    (open associations, a backlog to process) and its threads would hold the process after
    an exception, so the exit is forced: nothing is lost, since every instance answered
    Success is in the spool and a restart processes what is unfinished (a second SIGTERM
    kills the process as it would without a handler)."""
    try:
        log.info("signal received: draining")
        receiver.stop()
    except KeyboardInterrupt:
        print("sifluoro receive: stopped at once on a second signal; unfinished studies "
              "resume at the next start", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(130)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sifluoro receive", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    add_receive_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_receive(args)
    except ConfigError as exc:
        print(f"sifluoro: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
