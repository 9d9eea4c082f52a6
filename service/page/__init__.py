"""The try-it page at ``/``: its static files (``static/``) and their routes (``routes``)."""
