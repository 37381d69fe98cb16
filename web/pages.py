"""The HTML pages: the profile explorer and the agent page.

Templates only lay out the page; every name from a profile reaches the
browser as JSON and is put into the page with textContent or d3's .text().
"""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> str:
    return render_template("index.html")


@bp.get("/agent")
def agent() -> str:
    return render_template("agent.html")
