"""Frame dumps (one JSON line per frame at each hop), the tools that read them, and the
recorded-session fixture format built from them. Imports wire/ and telemetry/, never proxy/."""
