package wire

import "strings"

// The texts of the ERROR frames a broker sends, worded as the reference
// broker words them: clients, and operators grepping logs, recognise an
// error by them, so they are declared once, here.
const (
	ErrFirstNotAuth = "First message was not AUTH"
	// ErrAuthFailedPrefix is followed by the ident that tried to log in.
	ErrAuthFailedPrefix = "Authentication failed for "
	// ErrIdentMismatchPrefix is followed by the ident the PUBLISH carried.
	ErrIdentMismatchPrefix = "Invalid authkey in message, ident="
	// ErrNoPublishPrefix and ErrNoSubscribePrefix are followed by
	// "{ident}, chan={channel}"; see NotAllowed.
	ErrNoPublishPrefix   = "Authkey not allowed to pub here. ident="
	ErrNoSubscribePrefix = "Authkey not allowed to sub here. ident="
	ErrBackpressure      = "Backpressure deadline timer expired"
)

// AuthFailed is the error text for a refused login of ident.
func AuthFailed(ident string) string { return ErrAuthFailedPrefix + ident }

// IdentMismatch is the error text for a PUBLISH whose ident is not the
// session's.
func IdentMismatch(frameIdent string) string { return ErrIdentMismatchPrefix + frameIdent }

// NotAllowed is the error text for a PUBLISH (prefix ErrNoPublishPrefix) or
// SUBSCRIBE (ErrNoSubscribePrefix) to a channel ident may not use.
func NotAllowed(prefix, ident, channel string) string {
	return prefix + ident + ", chan=" + channel
}

// IsPermissionError reports whether text refuses a PUBLISH or SUBSCRIBE.
func IsPermissionError(text string) bool {
	return strings.HasPrefix(text, ErrNoPublishPrefix) || strings.HasPrefix(text, ErrNoSubscribePrefix) ||
		strings.HasPrefix(text, ErrIdentMismatchPrefix)
}
