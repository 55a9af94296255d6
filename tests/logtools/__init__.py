"""Real logging tools run against a live `oel serve` (tests/test_import_logs_tools.py): the receiver they export to,
the scripted agent they instrument, and the server's scripted tool decisions."""
