"""The web dashboard's files (index.html, static/app.css, static/app.js).

Plain HTML, CSS and JavaScript shipped as package data: no build step, no
CDN, nothing fetched from the internet. `p2psync.api.dashboard` serves them.
"""
