"""One router per module; app.py includes them."""
