"""Command line of the plug-in outputs: ``serve-igtl``, ``view``, ``export``, ``outbox send``.

``serve-igtl`` and ``view`` replay a study (DICOM files/folders, or ``--simulate CASE``) through
the Engine at the C-arm's pace and stream it; with ``--outbox DIR`` the key frames and the RDSR
are queued at study end, and with ``--pacs AE@HOST:PORT`` sent (what a previous run left pending
is sent first). ``export`` does the study-end part alone, as fast as possible. ``outbox send``
delivers what is pending.

Exit status: 0 done; 2 a typed error (bad input or setting); 3 files are left in the outbox
(the PACS was unreachable or refused them).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

from typing import TYPE_CHECKING

from sifluoro.argtypes import budget_ms, number
from sifluoro.config import Settings
from sifluoro.errors import ConfigError
from sifluoro.stages import LIVE_STAGES, add_stages_argument
from sifluoro.stopping import stop_on_signals

if TYPE_CHECKING:
    from sifluoro.plugin.outbox import PacsSettings

LEFT_IN_OUTBOX = 3
STOPPED_EARLY = 4  # the study was stopped before its end (Ctrl-C, SIGTERM)
_PORT = number(int, least=0, most=65535)


def parse_pacs(text: str, args) -> "PacsSettings":
    """``AE@HOST:PORT`` and the retry options into :class:`PacsSettings`."""
    from sifluoro.plugin.outbox import PacsSettings

    ae, at, rest = text.partition("@")
    host, colon, port = rest.rpartition(":")
    if not (ae and at and host and colon and port.isdigit()):
        raise ConfigError(f"--pacs {text!r}: expected AE_TITLE@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
    if host.startswith("[") and host.endswith("]"):  # an IPv6 address, as in a URL: [::1]
        host = host[1:-1]
    return PacsSettings(ae, host, int(port), calling_ae_title=args.calling_ae,
                        retries=args.retries, retry_wait_s=args.retry_wait_s)


def _add_pacs_arguments(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--pacs", metavar="AE@HOST:PORT", required=required,
                   help="C-STORE the outbox to this PACS")
    p.add_argument("--calling-ae", default="SIFLUORO", help="our AE title (default %(default)s)")
    p.add_argument("--retries", type=number(int, least=0), default=3,
                   help="further attempts when the PACS is down (default %(default)s)")
    p.add_argument("--retry-wait-s", type=number(least=0.0, unit="s"), default=2.0,
                   help="wait before the first retry, doubling (default %(default)s s)")


def _add_study_arguments(p: argparse.ArgumentParser, *, live: bool) -> None:
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="DICOM files or folders of one study")
    p.add_argument("--simulate", type=int, metavar="CASE",
                   help="simulate case CASE of --seed instead of reading INPUTs")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--size", type=int, choices=(512, 1024), default=512,
                   help="simulated frame size (default %(default)s)")
    p.add_argument("--study", metavar="UID", help="the study to use when the input holds several: its UID, or "
                   "a unique end of it (8 characters or more, as `dose summary` shows it)")
    if live:
        p.add_argument("--fps", type=number(above=0.0, unit="frames/s"), help="feed at this frame rate (default: the study's "
                       "own frame times, pauses between runs shortened to 2 s)")
    p.add_argument("--budget-ms", type=budget_ms, default=Settings().latency_budget_ms,
                   help="per-frame latency budget for image work (default %(default)s ms)")
    add_stages_argument(p, LIVE_STAGES)
    p.add_argument("--events", type=Path, metavar="EVENTS.jsonl")
    p.add_argument("--summary", type=Path, metavar="SUMMARY.json")
    p.add_argument("--outbox", type=Path, metavar="DIR", required=not live,
                   help="at study end, queue key frames (Secondary Capture) and the RDSR here")
    p.add_argument("--key-frames", type=number(int, least=0), default=12, help="at most this many key frames "
                   "(default %(default)s)")
    _add_pacs_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print no summary")


def add_plugin_parser(sub) -> None:
    """Register ``serve-igtl``, ``view``, ``export`` and ``outbox`` on the main parser."""
    p = sub.add_parser("serve-igtl", help="replay a study and stream tip, target, overlay and "
                       "state over OpenIGTLink (3D Slicer / SlicerIGT)")
    _add_study_arguments(p, live=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=_PORT, default=18944, help="TCP port, 0 for any (default %(default)s)")
    p.add_argument("--wait-client-s", type=number(least=0.0, unit="s"), default=0.0,
                   help="wait up to this long for a client before the first frame (default: start "
                   "at once)")
    p.add_argument("--image-every", type=number(int, least=0), default=1,
                   help="send the overlay IMAGE every n-th frame, 0 never (default %(default)s)")
    p.set_defaults(func=_serve_igtl)

    p = sub.add_parser("view", help="replay a study and show it live on a local web page")
    _add_study_arguments(p, live=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=_PORT, default=8000, help="TCP port, 0 for any (default %(default)s)")
    p.set_defaults(func=_view)

    p = sub.add_parser("export", help="replay a study and queue/send its key frames (Secondary "
                       "Capture) and RDSR")
    _add_study_arguments(p, live=False)
    p.set_defaults(func=_export)

    p = sub.add_parser("outbox", help="the DICOM outbox")
    osub = p.add_subparsers(dest="outbox_command", required=True)
    s = osub.add_parser("send", help="C-STORE what is pending to the PACS")
    s.add_argument("--outbox", type=Path, required=True, metavar="DIR")
    _add_pacs_arguments(s, required=True)
    s.add_argument("--requeue-failed", action="store_true",
                   help="first move what the PACS refused back to pending")
    s.set_defaults(func=_outbox_send)


class _Study:
    """Inputs, settings, engine, outbox and sender of one live command."""

    def __init__(self, args, *, stop: threading.Event):
        from sifluoro import Engine
        from sifluoro.outfiles import check_folder_writable, check_some_input_exists, check_writable
        from sifluoro.stages import make_stages

        if args.inputs and args.simulate is not None:  # one of them would be ignored
            raise ConfigError("give INPUT or --simulate, not both")
        if args.inputs:  # a mistyped path: one error, not a blank study (user review s20 I8)
            check_some_input_exists(tuple(args.inputs))
        # before the port opens and the study is read, as replay does
        check_writable(tuple(args.inputs), events=args.events, summary=args.summary)
        check_folder_writable(outbox=args.outbox)
        if args.pacs and not args.outbox:
            raise ConfigError("--pacs needs --outbox DIR (files wait there until the PACS takes them)")
        if not args.inputs and args.simulate is None:
            raise ConfigError("give INPUT files/folders of one study, or --simulate CASE")
        self.args, self.stop = args, stop
        self.settings = Settings(latency_budget_ms=args.budget_ms)
        self.engine = Engine(self.settings, stages=make_stages(args.stages, self.settings))
        self.pacs = parse_pacs(args.pacs, args) if args.pacs else None
        self.outbox = self.sender = self.exporter = None
        self.summary: dict | None = None
        self._tmp = None
        if args.outbox:
            from sifluoro.plugin.outbox import Outbox

            self.outbox = Outbox(args.outbox)

    def start_sender(self) -> None:
        """Start delivering to the PACS in the background (what an earlier run left, at once):
        once the command's port is open, so that a port in use ends it before any C-STORE."""
        if self.outbox is not None and self.pacs:
            from sifluoro.plugin.outbox import OutboxSender

            self.sender = OutboxSender(self.outbox, self.pacs).start()

    def inputs(self) -> list:
        if self.args.simulate is None:
            return list(self.args.inputs)
        from sifluoro.plugin.live import simulated_inputs

        self._tmp = tempfile.TemporaryDirectory(prefix="sifluoro-sim-")
        print(f"simulating case {self.args.simulate} (seed {self.args.seed}) ...", flush=True)
        return simulated_inputs(self._tmp.name, case=self.args.simulate, seed=self.args.seed,
                                size=self.args.size)

    def sinks(self) -> list:
        if self.outbox is None:
            return []
        from sifluoro.plugin.keyframes import StudyExporter

        self.exporter = StudyExporter(self.outbox, settings=self.settings,
                                      max_frames=self.args.key_frames,
                                      on_queued=self.sender.kick if self.sender else None)
        return [self.exporter]

    def replay(self, sinks: list, *, fps: float | None = None, paced: bool = True) -> dict:
        from sifluoro.plugin.live import LiveReplay

        summary = LiveReplay(self.engine, [*sinks, *self.sinks()], fps=fps, paced=paced,
                             stop=self.stop).run(
            self.inputs(), study_uid=self.args.study, events_path=self.args.events,
            summary_path=self.args.summary)
        if not summary.get("runs") and not summary.get("dose_reports"):
            # nothing read: the rejections, not a table of a blank study (as replay)
            for r in summary.get("rejected_files", []):
                print(f"sifluoro: rejected {r['file']}: {r['reason']}", file=sys.stderr, flush=True)
        elif not self.args.quiet:
            from sifluoro.replay import format_summary

            print(format_summary(summary), flush=True)
        self.summary = summary
        return summary

    def finish(self, *, wait: bool = True) -> int:
        """Deliver what is queued (if a PACS is set; with ``wait``, give the sender its retries
        first), report the outbox, clean up. What is not delivered stays pending.

        Exit status: 2 when no frame was processed, else ``LEFT_IN_OUTBOX`` when something was
        not delivered, else 1 when the RDSR, a key frame, the events or the summary could not
        be made, else ``STOPPED_EARLY`` when the study was stopped before its end, else 0."""
        code = 0
        if self.sender is not None:
            if wait:  # the sender's retries, unless the user asks to stop
                self.sender.kick()
                # the waits between retries too: --retries 5 --retry-wait-s 30 gave up before
                # the last retries (review s23)
                deadline = time.monotonic() + self.pacs.patience_s()
                while (not self.stop.is_set() and time.monotonic() < deadline
                       and not self.sender.wait_idle(0.2)):
                    pass
            self.sender.stop(abort=self.stop.is_set())
        if self.outbox is not None:
            code = _report_outbox(self.outbox, self.pacs)
        if self._tmp is not None:
            self._tmp.cleanup()
        if self.exporter is not None and self.exporter.errors:
            print(f"export: {len(self.exporter.errors)} item(s) could not be made: "
                  + "; ".join(self.exporter.errors), file=sys.stderr, flush=True)
            code = code or 1
        for what in ("events", "summary"):
            if self.summary is not None and self.summary.get(f"{what}_not_written"):
                print(f"sifluoro: {what} not written: {self.summary[f'{what}_not_written']}",
                      file=sys.stderr, flush=True)
                code = code or 1
        if self.summary is not None and self.summary.get("ended_early"):
            print(f"sifluoro: the study was stopped before its end ({self.summary['ended_early']}): "
                  "no RDSR nor key frames were queued for it", file=sys.stderr, flush=True)
            code = code or STOPPED_EARLY  # no RDSR was made for the part that ran
        if self.summary is not None and not self.summary.get("frames"):
            code = 2  # as replay: nothing to guide or report
        return code


def _report_outbox(outbox, pacs) -> int:
    pending, failed = len(outbox.pending()), len(outbox.failed())
    print(f"outbox {outbox.folder}: {len(outbox.sent())} sent, {pending} pending, {failed} refused"
          + (f" (PACS {pacs})" if pacs else " (no --pacs given)"), flush=True)
    return LEFT_IN_OUTBOX if pacs and (pending or failed) else 0


def _serve_igtl(args) -> int:
    from sifluoro.plugin.igtl import IgtlServer, IgtlSink

    stop = stop_on_signals()
    study = _Study(args, stop=stop)
    server = IgtlServer(args.host, args.port)
    study.start_sender()
    print(f"OpenIGTLink: listening on {server.host}:{server.port}", flush=True)
    try:
        if (args.wait_client_s > 0 and not server.wait_for_client(args.wait_client_s, stop)
                and not stop.is_set()):
            print(f"no OpenIGTLink client within {args.wait_client_s:g} s; starting anyway",
                  flush=True)
        sink = IgtlSink(server, image_every=args.image_every)
        summary = study.replay([sink], fps=args.fps)
    finally:
        short = server.close()
    # after the close's flush: a client that stalled did not get all of them
    # a client that fell behind is said in both cases (review s23 #9: only without a client)
    print((f"OpenIGTLink: {sink.frames_to_clients} of {sink.frames} frames queued for a client "
           f"({sink.tips_sent} with a tip; {summary['frames']} processed)"
           if sink.frames_to_clients else
           f"OpenIGTLink: no client was connected: none of {summary['frames']} frames sent")
          + (f"; {short} client(s) fell behind and did not receive every message" if short
             else ""), flush=True)
    return study.finish()


def _view(args) -> int:
    from sifluoro.plugin.view import ViewServer, ViewSink, ViewState

    stop = stop_on_signals()
    study = _Study(args, stop=stop)
    state = ViewState()
    server = ViewServer(state, host=args.host, port=args.port).start()
    study.start_sender()
    print(f"view: listening on {server.url}", flush=True)
    try:
        summary = study.replay([ViewSink(state)], fps=args.fps)
        if summary.get("frames"):  # else a page of zeros served until interrupted
            # the outbox sender goes on retrying while the page is served
            print("view: study ended; serving until interrupted", flush=True)
            stop.wait()
        else:
            print("view: no frame could be processed; nothing to serve", file=sys.stderr, flush=True)
    finally:
        server.close()
    return study.finish(wait=False)


def _export(args) -> int:
    if not args.outbox:
        raise ConfigError("export needs --outbox DIR")
    stop = stop_on_signals()
    study = _Study(args, stop=stop)  # sends at the end, in the foreground
    study.replay([], paced=False)
    if study.pacs and not stop.is_set():  # synchronous: the command ends when sending is done
        study.outbox.send_until_stopped(study.pacs, stop)
    return study.finish()


def _outbox_send(args) -> int:
    from sifluoro.plugin.outbox import Outbox

    if not args.pacs:
        raise ConfigError("outbox send needs --pacs AE@HOST:PORT")
    # only sends: a mistyped folder would be made an empty outbox with nothing to send
    if not (args.outbox / "pending").is_dir():
        raise ConfigError(f"--outbox {args.outbox}: not an outbox (no pending/ folder); give "
                          "the folder export, serve-igtl or view queued into")
    outbox = Outbox(args.outbox)
    pacs = parse_pacs(args.pacs, args)
    if args.requeue_failed:
        outbox.requeue_failed()
    report = outbox.send_until_stopped(pacs, stop_on_signals())
    if report.busy:
        print("outbox: another sender is working on it", file=sys.stderr)
    return _report_outbox(outbox, pacs)
