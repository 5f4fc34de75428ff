//! Registry hive tests (hive_cli): filled in by the work on issue 5.
