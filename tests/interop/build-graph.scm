;;; build-graph.scm -- a graph of 200 derivations (20 layers of 10, each
;;; node depending on two of the layer before) under one top derivation,
;;; built with at most 2 builds at once: every derivation is built exactly
;;; once, never more than 2 builders run at a time, and the closure is
;;; right.
;;;
;;; Run without a chroot: each builder writes `+' when it starts and `-'
;;; when it ends to `$GUIXD_IT_DIR/work/shared/events', from which the
;;; number of builders running at once is read.

(load (string-append (dirname (current-filename)) "/build-common.scm"))

(define s (connect))
(set-build-options s #:use-substitutes? #f #:verbosity 1)
(define bb (add-busybox! s))

;;; A graph of 200 derivations, at most 2 builds at once.

(define events (string-append (it-dir) "/work/shared/events"))

(define %layers 20)
(define %width 10)

(define (make-graph)
  ;; Node (L, I) depends on nodes (L-1, I) and (L-1, I+1 mod width).
  (let loop ((layer 0) (previous #f) (all '()))
    (if (= layer %layers)
        (values previous (reverse all))
        (let ((nodes
               (map (lambda (i)
                      (let* ((name (format #f "node-~a-~a" layer i))
                             (deps (if previous
                                       (list (list-ref previous i)
                                             (list-ref previous
                                                       (modulo (+ i 1) %width)))
                                       '())))
                        (sh-derivation
                         s bb name
                         (string-append
                          "echo + >> " events "; sleep 0.02;"
                          "mkdir $out; echo " name " > $out/name;"
                          (string-join
                           (map (lambda (d)
                                  (string-append "echo "
                                                 (derivation->output-path d)
                                                 " >> $out/deps;"))
                                deps)
                           "")
                          "echo - >> " events)
                         #:inputs (map derivation-input deps))))
                    (iota %width))))
          (loop (+ layer 1) nodes (append (reverse nodes) all))))))

(define-values (last-layer all-nodes) (make-graph))
(define top
  (sh-derivation s bb "graph-top"
                 (string-append
                  "echo + >> " events "; mkdir $out;"
                  (string-join
                   (map (lambda (d)
                          (string-append "echo " (derivation->output-path d)
                                         " >> $out/deps;"))
                        last-layer)
                   "")
                  "echo - >> " events)
                 #:inputs (map derivation-input last-layer)))

(define (most-builders-at-once text)
  "The largest number of builders that ran at the same time, from the
`+' and `-' lines of TEXT."
  (let loop ((lines (string-split text #\newline)) (now 0) (most 0))
    (match lines
      (() most)
      (("+" . rest) (loop rest (+ now 1) (max most (+ now 1))))
      (("-" . rest) (loop rest (- now 1) most))
      ((_ . rest) (loop rest now most)))))

(define (most-at-once log)
  "The largest number of builds that ran at the same time, from the build
traces of LOG."
  (let loop ((lines (string-split log #\newline)) (now 0) (most 0))
    (match lines
      (() most)
      ((raw . rest)
       (define line (string-trim raw (char-set #\| #\space)))
       (cond ((string-prefix? "@ build-started" line)
              (loop rest (+ now 1) (max most (+ now 1))))
             ((or (string-prefix? "@ build-succeeded" line)
                  (string-prefix? "@ build-failed" line))
              (loop rest (- now 1) most))
             (else (loop rest now most)))))))

(set-build-options s #:use-substitutes? #f #:verbosity 1 #:max-build-jobs 2)
;; Which builds run side by side depends on timing, so the log is not
;; compared, only what it adds up to.
(expect-built! "graph" s (list top) #:record-log? #f)
(record! "graph: builds" (count-traces %last-log "@ build-succeeded"))
(check! "graph: every derivation built once"
        (= (+ 1 (* %layers %width)) (count-traces %last-log "@ build-started"))
        (count-traces %last-log "@ build-started"))
(let ((most (most-builders-at-once (or (file-text events) ""))))
  (check! "graph: at most 2 builders at once" (<= most 2) most)
  (check! "graph: every builder ran once"
          (= (+ 1 (* %layers %width))
             (count-lines (or (file-text events) "") "+"))))
;; Traces are another matter: guixd frees a build's slot when its builder
;; ends, so the next builder may start while the outputs of the previous
;; one are registered, before its `@ build-succeeded'; the C++ daemon,
;; single-threaded, registers them before it starts anything else.
(record! "graph: builds in progress at once, at most 2 by the traces"
         (<= (most-at-once %last-log) 2))
(let ((closure (requisites s (list (derivation->output-path top)))))
  (record! "graph: closure size" (length closure))
  (check! "graph: closure"
          (equal? (sort closure string<?)
                  (sort (map derivation->output-path (cons top all-nodes))
                        string<?))
          (length closure)))
(record-outputs! "graph: top" s top)
(record-outputs! "graph: a node" s (list-ref all-nodes 105))

(step-alive! "alive at the end" s #t)
(finish!)
