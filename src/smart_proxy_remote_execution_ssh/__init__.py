"""The remote-execution plugin `script`: run Foreman jobs on hosts over SSH."""
