"""The report of the benchmark's login lines (bench/logins.py), from made-up results."""

from bench import logins


def test_login_table_states_each_target_with_its_ratio():
    runs = {f"{k}/login": [{"sessions_per_s": r, "cpu_ms_per_session": c, "errors": 0}]
            for k, (r, c) in {"securepop-cold": (40.0, 24.0), "securepop-warm": (600.0, 1.5),
                              "dovecot-argon2id-cold": (40.0, 22.0),
                              "dovecot-argon2id-warm": (40.0, 22.0),
                              "dovecot-sha512crypt-warm": (300.0, 3.0),
                              "dovecot-sha1-warm": (400.0, 2.0),
                              "floor": (1000.0, 0.5)}.items()}
    text = logins.tables({"runs": runs, "meta": {},
                          "verification": {"cpu_ms": 20.0, "wall_ms": 20.5}})
    assert "cold logins/s >= 1.0x Dovecot {ARGON2ID} cold: 1.00x" in text
    assert "against dovecot-sha1-warm: 1.50x" in text
    assert "warm CPU/session <= 2.5x the floor's: 3.00x" in text
    # 24 ms cold against 20 ms + 1.5 ms
    assert "one verification plus a warm session: 1.12x" in text
    assert "polling" not in text.lower()


def test_polling_table_and_window():
    rows = [(0.5, 10.0, 9.0), (1.5, 3.0, 2.0), (2.5, 4.0, 3.0)]
    assert logins._window(rows, 1.0, 3.0) == [2.0, 3.0]
    assert logins._window(rows, 3.0, 4.0) == []
    step = {"logins": 1000, "verifications": 80, "cache_share": 0.92,
            "cpu_ms_per_login": 3.0, "seconds": 120.0}
    polling = {"users": 600, "time_scale": 60.0, "interval_s": 5.0, "ttl_s": 60.0,
               "rate": 120.0, "duration_s": 180.0,
               "steady": dict(step, login_p50_ms=5.0, login_p99_ms=40.0),
               "all": dict(step, cache_share=0.5), "warmup_login_p50_ms": 9.0,
               "warmup_login_p99_ms": 900.0, "expected_cache_share": 0.9231,
               "loadgen": {"sessions": 1, "errors": 0, "busy_skips": 2}}
    text = logins.tables({"runs": {}, "meta": {}, "polling": polling})
    assert "| steady state (120 s) | 1000 | 80 | 92.0% | 92.3% | 3.00 | 5.0 | 40.0 | 8.00x |" in text
    assert "2 polls skipped" in text
    assert "real arrival rate" not in text      # no real-time line was run


def test_polling_real_time_line_states_its_rate_and_floor(tmp_path):
    polling = {"users": 600, "time_scale": 4.0, "interval_s": 75.0, "ttl_s": 900.0,
               "rate": 8.0, "duration_s": 1800.0,
               "steady": {"logins": 10, "verifications": 0, "cache_share": 1.0,
                          "cpu_ms_per_login": 2.0, "seconds": 900.0,
                          "login_p50_ms": 3.0, "login_p99_ms": 7.5},
               "all": {"logins": 20, "verifications": 10, "cache_share": 0.5,
                       "cpu_ms_per_login": 9.0, "seconds": 1800.0},
               "warmup_login_p50_ms": 9.0, "warmup_login_p99_ms": 900.0,
               "expected_cache_share": 0.9231,
               "loadgen": {"sessions": 1, "errors": 0, "busy_skips": 0},
               "real_time": {"users": 600, "rate": 2.0, "seconds": 600.0, "ttl_s": 3600.0,
                             "warmup": {"sessions": 600, "errors": 1},
                             "logins": 1200, "verifications": 3, "cache_share": 0.9975,
                             "cpu_ms_per_login": 2.5, "login_p50_ms": 4.0,
                             "login_p99_ms": 7.0, "errors": 0,
                             "floor": {"seconds": 300.0, "sessions": 600, "errors": 0,
                                       "p50_ms": 2.5, "p99_ms": 4.5,
                                       "cpu_ms_per_session": 1.2}}}
    text = logins.tables({"runs": {}, "meta": {}, "polling": polling})
    assert "| steady state (900 s) | 10 | 0 | 100.0% | 92.3% | 2.00 | 3.0 | 7.5 | 2.50x |" in text
    assert "real arrival rate (every 300 s on average: 2.0 logins/s" in text
    assert "600 warm-up logins at 40/s, 1 errors" in text
    assert "| real time | 1200 | 3 | 99.8% | 2.50 | 4.0 | 7.0 | 1.75x | 0 |" in text
    assert "The floor at the same arrivals (2.0 sessions/s" in text
    assert "p99/p50 1.80x" in text


def test_report_block_is_replaced_not_repeated(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("head\n<!-- measured: written by bench/run.py -->\nx\n<!-- /measured -->\ntail\n")
    results = {"runs": {}, "meta": {"args": ["--logins"]}}
    logins.write_report(results, path)
    logins.write_report(results, path)
    text = path.read_text()
    assert text.count(logins.START) == 1 and text.count(logins.END) == 1
    assert text.startswith("head\n") and text.endswith("tail\n")
    assert text.index("<!-- /measured -->") < text.index(logins.START)
