// The run counters as staff see them, on the campaign page's cards and the list's columns.

// Each entry is [counter, label, what it counts]. The counters are those the API returns in `counts`.
export const COUNTS = [
  ["recipients", "Recipients", "Members the run texts: the IQA rows with a number that can take a text, one per number."],
  ["sent", "Sent", "Texts Twilio accepted."],
  ["delivered", "Delivered", "Texts the carrier delivered."],
  ["failed", "Failed", "Texts that could not be sent, or that the carrier did not deliver."],
  ["undeliverable", "Undeliverable",
   "Texts Twilio accepted and then reported undeliverable: an unknown handset or a landline (errors 30005 and 30006). They are not retried."],
  ["opted_out", "Opted out", "Members whose number replied STOP."],
  ["cancelled", "Cancelled", "Texts not sent because the run was cancelled or failed."],
  ["skipped", "Skipped", "Not texted: IQA rows set aside before sending, and texts Twilio refused to create."],
];
