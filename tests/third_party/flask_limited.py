"""A Flask app limited by Flask-Limiter, for tests/third_party.rs.

Usage: python3 flask_limited.py LIMIT STRATEGY PORT
e.g.   python3 flask_limited.py "10 per 2 seconds" moving-window 3902

GET /ok answers "ok" under LIMIT (one counter: every caller shares it),
with Flask-Limiter's headers (X-RateLimit-Limit/-Remaining/-Reset and
Retry-After).
"""

import sys

from flask import Flask
from flask_limiter import Limiter

limit, strategy, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
app = Flask(__name__)
limiter = Limiter(
    lambda: "everyone",
    app=app,
    headers_enabled=True,
    strategy=strategy,
    storage_uri="memory://",
)


@app.route("/ok")
@limiter.limit(limit)
def ok():
    return "ok"


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=port, threaded=True)
