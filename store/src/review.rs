//! Reviews: a radiologist's verdict on a result (accept, reject, or
//! correct with the corrected class or finding).
//!
//! A review is never an edit: each is a new row, the result and its audit
//! record stay as they were. A second review of the same result by the
//! same reviewer (the same declared name, authenticated the same way: one
//! token cannot supersede another's reviews) is kept too; it *supersedes*
//! the earlier one, and only a reviewer's latest review of a result
//! *counts* ([`Review::counts`]).
//! A review that came as a DICOM SR is recorded once per SR instance: the
//! same SR received again (a C-STORE retry, STOW-RS of the same file)
//! returns the review already recorded.

use serde::Serialize;

use super::StoreResult;

/// What a reviewer says of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The result is right.
    Accept,
    /// The result is wrong.
    Reject,
    /// The result is wrong, and this is the right class or finding.
    Correct,
}

impl Verdict {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Reject => "reject",
            Self::Correct => "correct",
        }
    }

    /// From its name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "accept" => Some(Self::Accept),
            "reject" => Some(Self::Reject),
            "correct" => Some(Self::Correct),
            _ => None,
        }
    }
}

/// How a review arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewVia {
    /// `POST /api/v1/jobs/{id}/reviews`.
    Api,
    /// The review page served by Vigie (which posts to the same endpoint).
    Page,
    /// A reviewer's SR received by C-STORE or STOW-RS.
    Dicom,
}

impl ReviewVia {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Page => "page",
            Self::Dicom => "dicom",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "page" => Self::Page,
            "dicom" => Self::Dicom,
            _ => Self::Api,
        }
    }
}

/// A review to record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewReview {
    /// The job whose result is reviewed.
    pub job_id: i64,
    /// The reviewed result object (SR, SEG or summary image of the job).
    pub result_sop_instance_uid: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The corrected class or finding (`correct` only).
    pub label: Option<String>,
    /// Free text. May hold anything a person types: it is kept in the
    /// catalog, and only its SHA-256 goes into the audit trail and never
    /// into the logs.
    pub comment: Option<String>,
    /// Who reviewed: the person's name or identifier as declared (the
    /// token's name when none is declared; the SR's observer).
    pub reviewer: String,
    /// How it arrived.
    pub via: ReviewVia,
    /// What authenticated it: the token's name, or `AE <calling AE>` for
    /// DICOM.
    pub authenticated_as: String,
    /// The reviewer's SR, for a review that came as DICOM.
    pub source_sop_instance_uid: Option<String>,
}

/// A recorded review: the review as submitted, and what recording it
/// gave it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Review {
    /// Id (increasing in the order of recording).
    pub id: i64,
    /// The review as submitted.
    #[serde(flatten)]
    pub review: NewReview,
    /// When it was recorded (RFC 3339).
    pub recorded_at: String,
    /// When it was recorded (ms since the epoch).
    pub recorded_ms: i64,
    /// The earlier review of the same result by the same reviewer that
    /// this one supersedes.
    pub supersedes: Option<i64>,
    /// Whether this is the reviewer's latest review of the result: the one
    /// that counts.
    pub counts: bool,
}

/// What [`Reviews::record_review`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedReview {
    /// The review (the one already recorded when `already_recorded`).
    pub review: Review,
    /// The same DICOM SR was recorded before: nothing new was written.
    pub already_recorded: bool,
}

/// Which reviews to list.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewFilter {
    /// Of this job.
    pub job_id: Option<i64>,
    /// Of this result object.
    pub result_sop_instance_uid: Option<String>,
    /// Recorded at or after (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Recorded before (ms since the epoch).
    pub until_ms: Option<i64>,
    /// Only the reviews that count (each reviewer's latest of a result).
    pub counting_only: bool,
    /// At most this many, in the order of recording.
    pub limit: usize,
    /// After skipping this many.
    pub offset: usize,
}

impl Default for ReviewFilter {
    fn default() -> Self {
        Self {
            job_id: None,
            result_sop_instance_uid: None,
            since_ms: None,
            until_ms: None,
            counting_only: false,
            limit: 1000,
            offset: 0,
        }
    }
}

/// The reviews of results, and the link from a result object to its job.
pub trait Reviews: Send + Sync + 'static {
    /// Record a review (a new row; an earlier review of the same result by
    /// the same reviewer is superseded, never changed). A review from a
    /// DICOM SR already recorded is returned as it was.
    fn record_review(&self, review: &NewReview, now_ms: i64) -> StoreResult<RecordedReview>;

    /// Reviews matching `filter`, in the order they were recorded.
    fn reviews(&self, filter: &ReviewFilter) -> StoreResult<Vec<Review>>;

    /// The job that created the result object `sop_instance_uid`, if it is
    /// one of Vigie's results.
    fn result_job(&self, sop_instance_uid: &str) -> StoreResult<Option<i64>>;

    /// The result objects a job created, as indexed for DICOMweb.
    fn job_results(&self, job_id: i64) -> StoreResult<Vec<super::WebInstance>>;
}

pub(crate) mod sqlite {
    //! [`Reviews`] on the embedded catalog.

    use rusqlite::{OptionalExtension, Row, params};

    use super::{NewReview, RecordedReview, Review, ReviewFilter, ReviewVia, Reviews, Verdict};
    use crate::sqlite::{SqliteCatalog, web_from_row};
    use crate::{StoreResult, WebInstance, rfc3339};

    const COLUMNS: &str = "r.id, r.job_id, r.result_sop_instance_uid, r.verdict, r.label,
        r.comment, r.reviewer, r.via, r.authenticated_as, r.source_sop_instance_uid,
        r.recorded_ms, r.supersedes,
        NOT EXISTS (SELECT 1 FROM reviews l WHERE l.result_sop_instance_uid =
            r.result_sop_instance_uid AND l.authenticated_as = r.authenticated_as
            AND l.reviewer = r.reviewer AND l.id > r.id) AS counts";

    fn review_from_row(row: &Row<'_>) -> rusqlite::Result<Review> {
        let verdict: String = row.get("verdict")?;
        let recorded_ms: i64 = row.get("recorded_ms")?;
        Ok(Review {
            id: row.get("id")?,
            review: NewReview {
                job_id: row.get("job_id")?,
                result_sop_instance_uid: row.get("result_sop_instance_uid")?,
                // Written from a Verdict only; a foreign value reads as
                // reject rather than failing the listing.
                verdict: Verdict::parse(&verdict).unwrap_or(Verdict::Reject),
                label: row.get("label")?,
                comment: row.get("comment")?,
                reviewer: row.get("reviewer")?,
                via: ReviewVia::parse(&row.get::<_, String>("via")?),
                authenticated_as: row.get("authenticated_as")?,
                source_sop_instance_uid: row.get("source_sop_instance_uid")?,
            },
            recorded_at: rfc3339(recorded_ms),
            recorded_ms,
            supersedes: row.get("supersedes")?,
            counts: row.get("counts")?,
        })
    }

    fn by_id(c: &rusqlite::Connection, id: i64) -> rusqlite::Result<Review> {
        c.query_row(
            &format!("SELECT {COLUMNS} FROM reviews r WHERE r.id = ?1"),
            params![id],
            review_from_row,
        )
    }

    impl Reviews for SqliteCatalog {
        fn record_review(&self, review: &NewReview, now_ms: i64) -> StoreResult<RecordedReview> {
            self.with("record review", |c| {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                if let Some(source) = &review.source_sop_instance_uid {
                    let known: Option<i64> = tx
                        .query_row(
                            "SELECT id FROM reviews WHERE source_sop_instance_uid = ?1",
                            params![source],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if let Some(id) = known {
                        let review = by_id(&tx, id)?;
                        return Ok(RecordedReview {
                            review,
                            already_recorded: true,
                        });
                    }
                }
                let supersedes: Option<i64> = tx.query_row(
                    "SELECT max(id) FROM reviews
                     WHERE result_sop_instance_uid = ?1 AND authenticated_as = ?2
                       AND reviewer = ?3",
                    params![
                        review.result_sop_instance_uid,
                        review.authenticated_as,
                        review.reviewer
                    ],
                    |r| r.get(0),
                )?;
                tx.execute(
                    "INSERT INTO reviews (job_id, result_sop_instance_uid, verdict, label,
                        comment, reviewer, via, authenticated_as, source_sop_instance_uid,
                        recorded_ms, supersedes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        review.job_id,
                        review.result_sop_instance_uid,
                        review.verdict.as_str(),
                        review.label,
                        review.comment,
                        review.reviewer,
                        review.via.as_str(),
                        review.authenticated_as,
                        review.source_sop_instance_uid,
                        now_ms,
                        supersedes
                    ],
                )?;
                let review = by_id(&tx, tx.last_insert_rowid())?;
                tx.commit()?;
                Ok(RecordedReview {
                    review,
                    already_recorded: false,
                })
            })
        }

        fn reviews(&self, filter: &ReviewFilter) -> StoreResult<Vec<Review>> {
            self.with("list reviews", |c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT * FROM (SELECT {COLUMNS} FROM reviews r
                       WHERE (?1 IS NULL OR r.job_id = ?1)
                         AND (?2 IS NULL OR r.result_sop_instance_uid = ?2)
                         AND (?3 IS NULL OR r.recorded_ms >= ?3)
                         AND (?4 IS NULL OR r.recorded_ms < ?4))
                     WHERE (?5 = 0 OR counts)
                     ORDER BY id LIMIT ?6 OFFSET ?7"
                ))?;
                stmt.query_map(
                    params![
                        filter.job_id,
                        filter.result_sop_instance_uid,
                        filter.since_ms,
                        filter.until_ms,
                        filter.counting_only,
                        i64::try_from(filter.limit).unwrap_or(i64::MAX),
                        i64::try_from(filter.offset).unwrap_or(i64::MAX),
                    ],
                    review_from_row,
                )?
                .collect()
            })
        }

        fn result_job(&self, sop_instance_uid: &str) -> StoreResult<Option<i64>> {
            self.with("result job", |c| {
                c.query_row(
                    "SELECT job_id FROM web_index
                     WHERE sop_instance_uid = ?1 AND origin = 'result'",
                    params![sop_instance_uid],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .optional()
                .map(Option::flatten)
            })
        }

        fn job_results(&self, job_id: i64) -> StoreResult<Vec<WebInstance>> {
            self.with("job results", |c| {
                let mut stmt = c.prepare(
                    "SELECT * FROM web_index WHERE job_id = ?1 AND origin = 'result'
                     ORDER BY series_instance_uid, stored_ms, sop_instance_uid",
                )?;
                stmt.query_map(params![job_id], web_from_row)?.collect()
            })
        }
    }
}
