"""BPF modules (bcc) for latency heat maps and profiling."""
