"""Automatic rotation: the keys past their ``rotation_period`` rotated, their new values delivered once, and the
e-mail notices of what happens to a key (docs/rotation.md).

    runner.py    one pass: rotate what is due, post the webhook, send the notices due (shared by the background
                 task of ``gateway serve`` and ``gateway keys rotate-due``)
    notices.py   which notice a key is due and what it says (never a key value), and their delivery state
    mail.py      the SMTP client (aiosmtplib)
    webhook.py   the rotation webhook (httpx)
"""
