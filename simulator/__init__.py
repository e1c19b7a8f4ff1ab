"""Many virtual cars on one machine, running the real agent code over simulated hardware."""
