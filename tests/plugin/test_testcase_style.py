"""``use_store`` in ``unittest``/Django ``TestCase`` style: two test cases on one
module-global app, each sending the same receipt, both see it sent once (the memory
store used to keep the first test's key, and the second test's receipt was skipped)."""

from __future__ import annotations

import unittest

from celery_reliable.testing import use_store
from tests.plugin.usershop import app, mailer, send_receipt


class ReceiptTests(unittest.TestCase):
    def setUp(self) -> None:
        mailer.__init__()  # type: ignore[misc]
        cm = use_store(app, eager=True)
        self.reliable = cm.__enter__()
        self.addCleanup(cm.__exit__, None, None, None)

    def _send_twice(self) -> None:
        send_receipt.delay(1)
        send_receipt.delay(1)
        self.reliable.assert_ran_once(key="receipt:1")
        self.assertEqual(mailer.sent, [1])

    def test_first(self) -> None:
        self._send_twice()

    def test_second(self) -> None:
        self._send_twice()
