"""Dose registry and audit: many studies in a database (SQLite or PostgreSQL), DRL-style reports.

- :mod:`sifluoro.audit.schema`: tables and versioned migrations (SQLAlchemy 2);
- :mod:`sifluoro.audit.ingest`: folders of RDSRs and image studies → the registry;
- :mod:`sifluoro.audit.report`: per procedure and device statistics, outliers, trends;
  CSV, PNG charts and one self-contained HTML file;
- :mod:`sifluoro.audit.distributed`: Dask (optional) for batch ingest and batch replay;
- :mod:`sifluoro.audit.cli`: ``sifluoro audit ingest|report`` and ``sifluoro batch-replay``.

No patient name or ID is stored or logged; see :class:`~sifluoro.audit.settings.AuditSettings`.
"""
