//! Registry hive tests (hive_windows): filled in by the work on issue 5.
