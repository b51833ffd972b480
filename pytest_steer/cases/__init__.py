"""Case files: steer_*.toml expanded into typed cases and their settings; --steer-candidate."""
