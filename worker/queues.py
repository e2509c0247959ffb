"""Queue names and job defaults."""

DEFAULT = "tollgate-default"
PERIODIC = "tollgate-periodic"
ALL = (PERIODIC, DEFAULT)

JOB_TIMEOUT = 600  # seconds a job may run
RESULT_TTL = 3600  # seconds a result is kept
FAILURE_TTL = 7 * 86400  # failed jobs stay a week for inspection
