"""unittest.TestCase classes run under conveyor as under pytest."""

import unittest


class TestLedger(unittest.TestCase):
    def setUp(self):
        self.entries = [10, -3, 5]

    def test_balance(self):
        self.assertEqual(sum(self.entries), 12)

    def test_no_zero_entries(self):
        self.assertNotIn(0, self.entries)
