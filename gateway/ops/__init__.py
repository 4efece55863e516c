"""Operations: health probes and the configuration reference."""
