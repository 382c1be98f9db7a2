//! Why a join was refused: each reason with a stable code (for clients and the audit log),
//! an HTTP status, and a sentence a patient understands.

use crate::session_token::TokenError;
use jiff::Timestamp;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JoinRefusal {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the token is for another meeting than the one in the link")]
    MeetingMismatch,
    #[error("no meeting with this id has been booked")]
    MeetingUnknown,
    #[error("the meeting has been cancelled")]
    MeetingCancelled,
    #[error("the meeting is over")]
    MeetingOver,
    #[error("the waiting room is not open yet")]
    NotOpenYet {
        message: String,
        starts_at: Timestamp,
        opens_at: Timestamp,
    },
    #[error("the meeting has as many participants as it allows")]
    MeetingFull,
    #[error("a clinician turned this participant away from the meeting")]
    Denied,
    #[error("the token's care unit is not the unit of this drop-in queue")]
    WrongUnit,
    #[error("a consultant joins a visit only when its clinician has invited their HSA-id")]
    NotInvited,
    #[error("the meeting store cannot be reached; try again in a moment")]
    StoreUnavailable,
    #[error("this person connected to this meeting too often lately; try again in a few seconds")]
    TooManyJoins,
}

impl JoinRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            JoinRefusal::Token(e) => e.code(),
            JoinRefusal::MeetingMismatch => "meeting_mismatch",
            JoinRefusal::MeetingUnknown => "meeting_unknown",
            JoinRefusal::MeetingCancelled => "meeting_cancelled",
            JoinRefusal::MeetingOver => "meeting_over",
            JoinRefusal::NotOpenYet { .. } => "meeting_not_open",
            JoinRefusal::MeetingFull => "meeting_full",
            JoinRefusal::Denied => "denied",
            JoinRefusal::WrongUnit => "wrong_unit",
            JoinRefusal::NotInvited => "not_invited",
            JoinRefusal::StoreUnavailable => "store_unavailable",
            JoinRefusal::TooManyJoins => "too_many_joins",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            JoinRefusal::Token(e) => e.http_status(),
            JoinRefusal::MeetingUnknown => 404,
            JoinRefusal::MeetingCancelled | JoinRefusal::MeetingOver => 410,
            JoinRefusal::StoreUnavailable => 503,
            JoinRefusal::TooManyJoins => 429,
            JoinRefusal::MeetingMismatch
            | JoinRefusal::NotOpenYet { .. }
            | JoinRefusal::MeetingFull
            | JoinRefusal::Denied
            | JoinRefusal::WrongUnit
            | JoinRefusal::NotInvited => 403,
        }
    }

    /// What the person in front of the screen is told (Swedish: the patients' language).
    pub fn message(&self) -> String {
        match self {
            JoinRefusal::Token(TokenError::Expired) => {
                "Länken har gått ut. Kontakta din mottagning för en ny.".into()
            }
            JoinRefusal::Token(TokenError::NotYetValid) => {
                "Länken gäller inte än. Försök igen närmare besökstiden.".into()
            }
            JoinRefusal::Token(_) => {
                "Länken är inte giltig. Öppna den igen från meddelandet du fick.".into()
            }
            JoinRefusal::MeetingMismatch => {
                "Länken hör till ett annat besök. Öppna den igen från meddelandet du fick.".into()
            }
            JoinRefusal::MeetingUnknown => "Besöket finns inte.".into(),
            JoinRefusal::MeetingCancelled => {
                "Besöket är avbokat. Kontakta din mottagning om du har frågor.".into()
            }
            JoinRefusal::MeetingOver => "Besöket är avslutat.".into(),
            JoinRefusal::NotOpenYet { message, .. } => message.clone(),
            JoinRefusal::MeetingFull => {
                "Besöket har redan så många deltagare som får vara med.".into()
            }
            JoinRefusal::Denied => "Du har inte släppts in i det här besöket.".into(),
            JoinRefusal::WrongUnit => "Du hör inte till den här mottagningens kö.".into(),
            JoinRefusal::NotInvited => {
                "Du är inte inbjuden till det här besöket. Be vårdpersonalen som har besöket att bjuda in dig.".into()
            }
            JoinRefusal::StoreUnavailable => {
                "Det gick inte att ansluta just nu. Försök igen om en stund.".into()
            }
            JoinRefusal::TooManyJoins => {
                "Du har anslutit många gånger på kort tid. Vänta en stund och försök igen.".into()
            }
        }
    }

    /// The JSON body of a refused HTTP request.
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "error": self.code(),
            "reason": self.to_string(),
            "message": self.message(),
        });
        if let JoinRefusal::NotOpenYet {
            starts_at,
            opens_at,
            ..
        } = self
        {
            body["starts_at"] = starts_at.to_string().into();
            body["opens_at"] = opens_at.to_string().into();
        }
        body
    }
}
