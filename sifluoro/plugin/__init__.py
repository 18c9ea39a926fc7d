"""What a workstation or navigation system gets from a live study, beyond the Engine API.

- :mod:`sifluoro.plugin.live`: drive a study (recorded or simulated) through an
  :class:`~sifluoro.engine.Engine`, paced like the C-arm, drawing each frame's overlay and
  handing it to sinks;
- :mod:`sifluoro.plugin.igtl`: an OpenIGTLink server (tip and target as POINT, tip as
  TRANSFORM, the overlay as IMAGE, state as STRING) for 3D Slicer / SlicerIGT;
- :mod:`sifluoro.plugin.view`: a live web page (overlay frame, dose counters, alerts);
- :mod:`sifluoro.plugin.keyframes`: key frames with overlays as Secondary Capture and the RDSR
  at study end;
- :mod:`sifluoro.plugin.outbox`: a persistent outbox that C-STOREs them to a PACS with retries.
"""
