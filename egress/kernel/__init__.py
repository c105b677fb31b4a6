"""Facts both programs share, each stated once: durations, date placeholders, temp names,
atomic writes, ISO times, S3 URIs, error reasons and the probe server.

The kernel imports nothing from the rest of ``egress`` or from ``sft_agent``; both
programs import it.
"""
