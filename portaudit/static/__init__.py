"""The static half of portaudit: a manifest checked against two parsed trees, nothing imported or run."""
