"""The worker's HTTP client of A1111's ``/sdapi/v1`` API: the only package that knows the engine's URLs.

``client`` (the calls a job makes) over ``transport`` (session, timeouts, retries, keep-alive recovery) and
``responses`` (answers → typed errors); ``process`` (is the engine alive), ``readiness`` (polling and
warm-up), ``catalog`` (the engine's lists, cached), ``progress``; ``endpoints`` and ``txt2img_fields`` are
pure data the job schema shares. Importing this package imports none of its modules.
"""
