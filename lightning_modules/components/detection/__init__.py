"""Open-set detector building blocks (Grounding DINO core → DINO-X); no Lightning imports."""
